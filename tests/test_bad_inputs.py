"""Every bad input is one red line and exit 1, never a traceback or a prompt; each exact line is
pinned here (docs/errors.md lists them)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import write_sst2
from hskcache.cli import app as hskcache_app
from hsktrain.cli import app as hsktrain_app

runner = CliRunner()
BIN = Path(sys.executable).parent


def error_line(result) -> str:
    """The single output line of a refused command (exit 1), without the 'error: ' prefix."""
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0].removeprefix("error: ")


def no_store(out: Path) -> bool:
    """Nothing written at `out` (an empty folder, e.g. a released lock's, is nothing)."""
    return not out.exists() or not any(out.iterdir())


def build(data, out, teacher, *extra) -> str:
    args = ["build", "--data", str(data), "--teacher", str(teacher), "--max-length", "16"]
    args += ["--hsk", "1l_4t_0.25h", "--quiet", *extra]
    if out is not None:
        args += ["--out", str(out)]
    return error_line(runner.invoke(hskcache_app, args))


def evaluate(model, data, *extra) -> str:
    args = ["eval", str(model), "--data", str(data), *extra]
    return error_line(runner.invoke(hsktrain_app, args))


# ---- data files ---------------------------------------------------------------------------


def test_non_utf8_tsv(tmp_path, sst2_dir, tiny_bert):
    dev = sst2_dir / "dev.tsv"
    dev.write_bytes(b"sentence\tlabel\ngood\t1\nbad \xff film\t0\n")
    want = f"{dev}:3: not UTF-8 (byte 0xff); re-save the file as UTF-8"
    assert build(sst2_dir, tmp_path / "c", tiny_bert, "--split", "dev") == want
    assert evaluate(tiny_bert, sst2_dir) == want


def test_non_utf8_table(tmp_path, tiny_bert):
    f = tmp_path / "t.csv"
    f.write_bytes(b"text,label\na,x\nb\xe9,y\n")
    assert build(f, tmp_path / "c", tiny_bert) == (
        f"{f}:3: not UTF-8 (byte 0xe9); re-save the file as UTF-8"
    )


def test_tsv_field_over_csv_limit(tmp_path, sst2_dir, tiny_bert):
    dev = sst2_dir / "dev.tsv"
    dev.write_text("sentence\tlabel\ngood\t1\n" + "a" * 131_073 + "\t0\n")
    assert build(sst2_dir, tmp_path / "c", tiny_bert, "--split", "dev") == (
        f"{dev}:3: a field is longer than 131,072 characters (the csv module's limit; field "
        "larger than field limit (131072)); is this really a TSV of sentences?"
    )


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (
            (5, 6),  # a JSON column is all numbers or all strings
            "row 1: text column 'text' holds int 5, not text; pick the text column with "
            "--text-column",
        ),
        (("good", None), "row 2: text column 'text' is empty (null); fill or drop the row"),
    ],
)
def test_non_text_in_a_table_builds_nothing(tmp_path, tiny_bert, texts, message):
    f = tmp_path / "t.jsonl"
    rows = [{"text": t, "label": y} for t, y in zip(texts, "ab", strict=True)]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "c"
    assert build(f, out, tiny_bert) == f"{f}: {message}"
    assert no_store(out)  # refused before the store is created


def test_nan_regression_label(tmp_path, tiny_bert):
    d = tmp_path / "STS-B"
    d.mkdir()
    (d / "train.tsv").write_text(
        "sentence1\tsentence2\tscore\na\tb\t1.5\nc\td\tnan\n", encoding="utf-8"
    )
    out = tmp_path / "c"
    assert build(d, out, tiny_bert) == (
        f"{d / 'train.tsv'}:3: regression label 'nan' is not a finite number"
    )
    assert no_store(out)


# ---- build settings -------------------------------------------------------------------------


def test_build_without_out(sst2_dir, tiny_bert):
    assert build(sst2_dir, None, tiny_bert) == (
        "missing required setting(s) ['out']; pass --out or set it in --config"
    )


def test_out_is_a_file(tmp_path, sst2_dir, tiny_bert):
    f = tmp_path / "file"
    f.write_text("x")
    assert build(sst2_dir, f, tiny_bert) == (
        f"out {f} is a file; --out must be a folder (new, or a cache to resume)"
    )


def test_out_under_read_only_folder(tmp_path, sst2_dir, tiny_bert):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root ignores modes; a read-only mount does not
        locked = Path("/proc/sys")
        if os.access(locked, os.W_OK):
            pytest.skip("no read-only folder available to this user")
    out = locked / "new" / "c"
    try:
        assert build(sst2_dir, out, tiny_bert) == (
            f"out {out}: {locked} is not writable; pick another --out"
        )
    finally:
        (tmp_path / "locked").chmod(0o755)


def test_cuda_without_cuda(monkeypatch, tmp_path, sst2_dir, tiny_bert):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    want = (
        f"device 'cuda' asked for, but torch {torch.__version__} sees no CUDA GPU here; "
        "use --device cpu"
    )
    assert build(sst2_dir, tmp_path / "c", tiny_bert, "--device", "cuda") == want
    assert evaluate(tiny_bert, sst2_dir, "--device", "cuda") == want


def test_toml_wrong_types_all_named(tmp_path, sst2_dir, tiny_bert):
    toml = tmp_path / "b.toml"
    toml.write_text('batch_size = "32"\nlimit = 1.5\noverwrite = 1\nteacher_layers = [1, "2"]\n')
    r = runner.invoke(hskcache_app, ["build", "--config", str(toml), "--data", str(sst2_dir)])
    assert error_line(r) == (
        f"{toml}: wrong value types: batch_size = '32' is str, expected int; limit = 1.5 is "
        "float, expected int | None; overwrite = 1 is int, expected bool; teacher_layers = "
        "[1, '2'] is list, expected list[int]"
    )


def test_negative_limit(tmp_path, sst2_dir, tiny_bert):
    assert build(sst2_dir, tmp_path / "c", tiny_bert, "--limit", "-3") == "limit must be >= 1"
    assert evaluate(tiny_bert, sst2_dir, "--limit", "-3") == (
        "limit -3 must be >= 1 (it keeps the first N rows)"
    )


# ---- eval -----------------------------------------------------------------------------------


def test_eval_run_folder_hints_best(tmp_path, fit_world):
    """The folder a real `hsktrain fit --out RUN` writes: its own config.json (the run's
    record) once hid the hint behind 'pickle checkpoints are refused'."""
    run = tmp_path / "run"
    args = ["fit", "--cache", str(fit_world["cache"]), "--out", str(run), "--student", "tiny"]
    args += ["--hsk-epochs", "1", "--pred-epochs", "1", "--batch-size", "8", "--quiet"]
    args += ["--dev-data", str(fit_world["data"])]
    r = runner.invoke(hsktrain_app, args)
    assert r.exit_code == 0 and (run / "best").is_dir() and (run / "last").is_dir(), r.output
    assert evaluate(run, fit_world["data"]) == (
        f"{run}: a run folder, not a model folder; did you mean {run / 'best'}"
    )


def test_eval_pickle_only(tmp_path, sst2_dir, tiny_bert):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny_bert / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"")
    assert evaluate(pickled, sst2_dir) == (
        f"{pickled}: no *.safetensors weights; pickle checkpoints are refused, re-save with "
        "save_pretrained(safe_serialization=True)"
    )


@pytest.mark.parametrize("length", ["1", "1000"])
def test_eval_max_length_out_of_range(sst2_dir, tiny_bert, length):
    # the tiny teacher has 128 positions
    assert evaluate(tiny_bert, sst2_dir, "--max-length", length) == (
        f"max length {length} is outside 2..128, the most this model's position embeddings "
        "allow; use a --max-length in that range"
    )


def test_eval_batch_size_zero(sst2_dir, tiny_bert):
    assert evaluate(tiny_bert, sst2_dir, "--batch-size", "0") == "batch size 0 must be >= 1"


def test_eval_label_count_mismatch(tmp_path, tiny_bert):
    d = tmp_path / "STS-B"
    d.mkdir()
    (d / "dev.tsv").write_text("sentence1\tsentence2\tscore\na\tb\t1.5\nc\td\t4\n")
    assert evaluate(tiny_bert, d) == (
        f"{tiny_bert}: model has 2 output label(s), task 'stsb' has 1; evaluate it on the "
        "task it was trained for"
    )


# ---- subprocesses: what only a real process shows (stdin, hub retries) ----------------------


def custom_code_folder(root: Path, model_type: str) -> tuple[Path, Path]:
    """A model folder whose config asks for its own code, and the file that code would write."""
    root.mkdir()
    marker = root / "CODE_RAN"
    config = {
        "model_type": model_type,
        "architectures": ["BertForSequenceClassification"],
        "auto_map": {
            "AutoConfig": "evil.EvilConfig",
            "AutoModelForSequenceClassification": "evil.EvilModel",
        },
    }
    (root / "config.json").write_text(json.dumps(config))
    (root / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (root / "model.safetensors").write_bytes(b"")
    return root, marker


def run_cli(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, input="y\ny\ny\n", capture_output=True, text=True, timeout=120, env=env
    )


def test_custom_code_never_runs_build(tmp_path, sst2_dir):
    folder, marker = custom_code_folder(tmp_path / "evil", "evil-bert")
    r = run_cli(
        [
            BIN / "hskcache",
            "build",
            "--data",
            sst2_dir,
            "--out",
            tmp_path / "c",
            "--teacher",
            folder,
        ]
    )
    assert r.returncode == 1 and not marker.exists(), r.stdout + r.stderr
    assert r.stderr.strip() == (
        f"error: {folder / 'config.json'}: has an auto_map (custom Python code); refused: only "
        "built-in transformers families load, and a model's own code never runs"
    )


def test_custom_code_never_runs_eval(tmp_path, sst2_dir):
    folder, marker = custom_code_folder(tmp_path / "evil", "bert")
    r = run_cli([BIN / "hsktrain", "eval", folder, "--data", sst2_dir])
    assert r.returncode == 1 and not marker.exists(), r.stdout + r.stderr
    assert "has an auto_map (custom Python code); refused" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_missing_local_name_fails_fast(tmp_path):
    """A name with no slash that is no folder: no 26 s of hub retries when the hub is down."""
    data = write_sst2(tmp_path / "SST-2")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens: the hub is unreachable
    t0 = time.monotonic()
    r = run_cli(
        [
            BIN / "hskcache",
            "build",
            "--data",
            data,
            "--out",
            tmp_path / "c",
            "--teacher",
            "mymodel",
        ],
        env,
    )
    model_s = time.monotonic() - t0
    assert r.returncode == 1 and r.stderr.strip() == (
        "error: mymodel: no such folder, and the Hugging Face hub is unreachable to look it up "
        "as a model name; check the path"
    ), r.stderr
    t0 = time.monotonic()
    r = run_cli([BIN / "hskcache", "build", "--data", "mydata", "--out", tmp_path / "c"], env)
    data_s = time.monotonic() - t0
    assert r.returncode == 1 and r.stderr.strip() == (
        "error: mydata: no such file or folder, and the Hugging Face hub is unreachable to load "
        "it as a dataset name; check the path"
    ), r.stderr
    assert model_s < 10 and data_s < 10  # was 26 s each; process start is ~2-3 s of this


def test_docs_errors_table_names_real_tests():
    """docs/errors.md backs every line with a test: each one it names must exist."""
    import re

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "errors.md").read_text()
    named = set(re.findall(r"`(tests/\w+\.py)::(\w+)`", doc))
    assert len(named) > 30
    missing = [
        f"{f}::{t}"
        for f, t in sorted(named)
        if not (root / f).is_file() or f"def {t}(" not in (root / f).read_text()
    ]
    assert not missing, f"docs/errors.md names tests that do not exist: {missing}"
