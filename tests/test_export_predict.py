"""`hsktrain export --onnx` (parity with PyTorch through onnxruntime) and `hsktrain predict`
(one record a row, class names from `id2label`), with their refusals."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from conftest import make_bert, make_mpnet, write_mrpc
from hskcache.errors import ConfigError, ExportError
from hsktrain import export as export_module
from hsktrain.cli import app
from hsktrain.export import export_onnx

NAMES = {0: "not_equivalent", 1: "equivalent"}


def named(folder: Path, make=make_bert, **kw) -> Path:
    """A tiny model folder as a run of ours leaves it: class names, task and max length."""
    make(folder, **kw)
    config = AutoConfig.from_pretrained(folder)
    if config.num_labels == 2:
        config.id2label, config.label2id = NAMES, {v: k for k, v in NAMES.items()}
        config.save_pretrained(folder)
    (folder / "hsktrain.json").write_text(json.dumps({"task": "mrpc", "max_length": 32}))
    return folder


def torch_logits(folder: Path, texts, pairs=None) -> np.ndarray:
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    enc = tok(texts, pairs, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits.numpy()


@pytest.mark.parametrize(
    "make, inputs",
    [
        (make_bert, ["input_ids", "token_type_ids", "attention_mask"]),
        (make_mpnet, ["input_ids", "attention_mask"]),  # MPNet has no segment ids
    ],
)
def test_export_matches_pytorch_on_new_shapes(tmp_path, make, inputs):
    folder = named(tmp_path / "model", make)
    out = tmp_path / "model.onnx"
    r = CliRunner().invoke(app, ["export", str(folder), "--onnx", str(out)])
    assert r.exit_code == 0, r.output
    assert f"wrote {out} (inputs {', '.join(inputs)}); max |ONNX - PyTorch| logit on 9 rows" in (
        " ".join(r.output.split())
    )
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == inputs
    tok = AutoTokenizer.from_pretrained(folder)
    for texts in (["awful"], ["the movie was good", "a bad film", "great fun"] * 2):
        enc = tok(texts, padding=True, return_tensors="np")  # batch and length not exported
        (logits,) = session.run(["logits"], {k: enc[k] for k in inputs})
        np.testing.assert_allclose(logits, torch_logits(folder, texts), atol=1e-5, rtol=0)
    assert list(tmp_path.glob(".*partial")) == []


def test_export_refusals(tmp_path, monkeypatch):
    folder = named(tmp_path / "model")
    out = tmp_path / "model.onnx"
    out.write_text("keep me")
    with pytest.raises(ConfigError) as e:
        export_onnx(folder, out)
    assert str(e.value) == (
        f"{out}: --onnx exists; pass --overwrite to replace it, or choose another"
    )
    with pytest.raises(ConfigError, match=r"^--tolerance 0 must be > 0$"):
        export_onnx(folder, out, tolerance=0)

    # an export whose logits drift: refused, and neither OUT nor the temporary file is left
    def fake_export(model, args, path, **kw):
        Path(path).write_bytes(b"onnx")

    monkeypatch.setattr(export_module.torch.onnx, "export", fake_export)
    monkeypatch.setattr(export_module, "_max_difference", lambda *a: 0.5)
    out.unlink()
    with pytest.raises(ExportError) as e:
        export_onnx(folder, out)
    assert str(e.value) == (
        f"{folder}: the ONNX logits differ from PyTorch's by up to 0.5 (tolerance 0.0001); "
        f"nothing written to {out}. Report the model type (bert), or pass a larger "
        "--tolerance if you accept it"
    )
    assert list(tmp_path.glob("*.onnx")) + list(tmp_path.glob(".*partial")) == []


def test_export_failures_and_a_missing_extra(tmp_path, monkeypatch):
    folder = named(tmp_path / "model")

    def broken_export(*a, **kw):
        raise RuntimeError("unsupported operator\nlong trace")

    monkeypatch.setattr(export_module.torch.onnx, "export", broken_export)
    with pytest.raises(ExportError) as e:
        export_onnx(folder, tmp_path / "m.onnx")
    assert str(e.value) == f"{folder}: torch.onnx cannot export it (unsupported operator)"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ConfigError) as e:
        export_onnx(folder, tmp_path / "m.onnx")
    assert str(e.value).startswith("ONNX export needs onnx, onnxscript and onnxruntime (")
    assert str(e.value).endswith("); pip install 'hskcache[export]'")
    assert list(tmp_path.glob("*.onnx")) + list(tmp_path.glob(".*partial")) == []


def test_predict_pairs_to_jsonl_with_the_run_task(tmp_path):
    folder = named(tmp_path / "model")
    data = write_mrpc(tmp_path / "MRPC")
    out = tmp_path / "p.jsonl"
    r = CliRunner().invoke(
        app, ["predict", str(folder), "--data", str(data), "--out", str(out), "--quiet"]
    )
    assert r.exit_code == 0, r.output
    assert f"wrote {out}: 26 rows from {data / 'dev.tsv'}" in " ".join(r.output.split())
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 26 and set(rows[0]) == {
        "text",
        "text_pair",
        "label",
        "label_id",
        "probabilities",
    }
    texts, pairs = [x["text"] for x in rows[:3]], [x["text_pair"] for x in rows[:3]]
    assert texts[1:] == ["a bad film", "i loved this charming story"]  # the task's columns
    expected = torch.softmax(torch.from_numpy(torch_logits(folder, texts, pairs)), -1).numpy()
    np.testing.assert_allclose([x["probabilities"] for x in rows[:3]], expected, atol=1e-6)
    for x in rows:
        assert x["label_id"] == int(np.argmax(x["probabilities"]))
        assert x["label"] == NAMES[x["label_id"]]


def test_predict_text_file_to_csv_and_regression(tmp_path):
    folder = named(tmp_path / "model")
    lines = tmp_path / "lines.txt"
    lines.write_text("the movie was good\n\nawful\n")  # the blank line is skipped
    out = tmp_path / "p.csv"
    args = ["predict", str(folder), "--data", str(lines), "--out", str(out), "--quiet"]
    assert CliRunner().invoke(app, args).exit_code == 0
    with out.open() as f:
        table = list(csv.reader(f))
    assert table[0] == ["text", "label", "label_id", "p_not_equivalent", "p_equivalent"]
    assert [row[0] for row in table[1:]] == ["the movie was good", "awful"]
    probs = np.array([[float(v) for v in row[3:]] for row in table[1:]])
    logits = torch_logits(folder, ["the movie was good", "awful"])
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(logits), -1), atol=1e-6)

    regression = named(tmp_path / "stsb", num_labels=1)
    out = tmp_path / "s.jsonl"
    args = ["predict", str(regression), "--data", str(lines), "--out", str(out), "--quiet"]
    assert CliRunner().invoke(app, args).exit_code == 0
    scores = [json.loads(x)["score"] for x in out.read_text().splitlines()]
    logits = torch_logits(regression, ["the movie was good", "awful"])
    np.testing.assert_allclose(scores, logits[:, 0], atol=1e-6)


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "{out}: --out exists; pass --overwrite to replace it, or choose another"),
        (
            ["--text-column", "q"],
            "{lines}: a text file has no columns (one text a line); drop --text-column, or "
            "give a table (.csv, .json, .jsonl, .parquet, .tsv)",
        ),
        (["--limit", "0"], "limit 0 must be >= 1 (it keeps the first N rows)"),
    ],
)
def test_predict_refusals(tmp_path, extra, message):
    folder = named(tmp_path / "model")
    lines = tmp_path / "lines.txt"
    lines.write_text("awful\n")
    out = tmp_path / "p.jsonl"
    out.write_text("keep me")
    overwrite = [] if not extra else ["--overwrite"]
    args = ["predict", str(folder), "--data", str(lines), "--out", str(out), *overwrite, *extra]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1
    assert " ".join(r.output.split()) == f"error: {message.format(out=out, lines=lines)}"
    assert out.read_text() == "keep me"


def test_predict_refuses_another_suffix_and_empty_text(tmp_path):
    from hskcache.errors import DataFormatError
    from hsktrain.predict import predict_file

    with pytest.raises(ConfigError) as e:
        predict_file(tmp_path, "x.txt", tmp_path / "p.txt")
    assert str(e.value) == f"{tmp_path / 'p.txt'}: --out must end in .jsonl or .csv"
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    with pytest.raises(DataFormatError) as e:
        predict_file(named(tmp_path / "model"), str(blank), tmp_path / "p.jsonl")
    assert str(e.value) == f"{blank}: no lines with text to score"
    assert not (tmp_path / "p.jsonl").exists()
