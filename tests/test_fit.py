"""`hsktrain fit`: offline == online, exact resume, stages, best checkpoint, refusals, e2e."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import make_bert, write_sst2
from hskcache.build import build_cache
from hskcache.config import BuildConfig
from hskcache.errors import CacheError, CacheIncompleteError, CacheMismatchError
from hsktrain.cli import app
from hsktrain.config import FitConfig
from hsktrain.train import fit

HSK = "1l_4t_0.25h"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("fit")
    data = write_sst2(root / "SST-2", 48)
    cache = build_cache(
        BuildConfig(
            data=str(data),
            out=str(root / "cache"),
            teacher=str(tiny_bert),
            hsk=HSK,
            max_length=16,
            chunk_rows=8,
            student_layers=2,
        ),
        show_progress=False,
    )
    return {"root": root, "data": data, "cache": cache, "teacher": tiny_bert}


def step_losses(out: Path) -> list[tuple[str, float]]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["stage"], r["loss"]) for r in rows if "loss" in r]


def base(world, out, **kw) -> FitConfig:
    defaults = dict(
        student="tiny", hsk_epochs=2, pred_epochs=2, batch_size=8, buffer_chunks=2, chunk_rows=8
    )
    return FitConfig(out=str(out), **{**defaults, **kw})


def test_offline_equals_online(world, tmp_path):
    off = base(world, tmp_path / "off", cache=str(world["cache"]))
    on = base(
        world,
        tmp_path / "on",
        online_teacher=str(world["teacher"]),
        data=str(world["data"]),
        hsk=HSK,
        max_length=16,
    )
    fit(off, show_progress=False)
    fit(on, show_progress=False)
    a, b = step_losses(tmp_path / "off"), step_losses(tmp_path / "on")
    assert [s for s, _ in a] == [s for s, _ in b] == ["hsk"] * 12 + ["pred"] * 12
    # The cache stores fp16 values; online targets are fp32. Relative fp16 rounding (2^-11)
    # of targets moves an MSE of O(1) by ~1e-3 at most.
    np.testing.assert_allclose([x for _, x in a], [x for _, x in b], rtol=2e-3, atol=1e-5)
    assert [x for _, x in a] != [x for _, x in step_losses(tmp_path / "off")][::-1]


def test_resume_equals_uninterrupted(world, tmp_path):
    straight = base(world, tmp_path / "a", cache=str(world["cache"]), dev_data=str(world["data"]))
    fit(straight, show_progress=False)
    cut = base(
        world, tmp_path / "b", cache=str(world["cache"]), dev_data=str(world["data"]), max_steps=9
    )  # mid-epoch of the HSK stage (6 batches per epoch)
    fit(cut, show_progress=False)
    assert len(step_losses(tmp_path / "b")) == 9
    with (tmp_path / "b" / "metrics.jsonl").open("a") as f:  # logged after the save, then killed
        f.write(json.dumps({"stage": "hsk", "step": 10, "loss": 9.9}) + "\n")
    fit(
        base(
            world,
            tmp_path / "b",
            cache=str(world["cache"]),
            dev_data=str(world["data"]),
            resume=True,
        ),
        show_progress=False,
    )
    assert step_losses(tmp_path / "b") == step_losses(tmp_path / "a")
    wa = load_file(tmp_path / "a" / "best" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "best" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_stages_and_best_checkpoint(world, tmp_path):
    out = tmp_path / "r"
    best = fit(
        base(
            world,
            out,
            cache=str(world["cache"]),
            dev_data=str(world["data"]),
            hsk_epochs=1,
            pred_epochs=3,
        ),
        show_progress=False,
    )
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "dev" in r]
    assert [r["stage"] for r in epochs] == ["hsk", "pred", "pred", "pred"]
    pred_scores = [r["dev"]["accuracy"] for r in epochs if r["stage"] == "pred"]
    assert best["accuracy"] == max(pred_scores)
    saved = json.loads((out / "best" / "hsktrain.json").read_text())
    assert saved["dev"]["accuracy"] == max(pred_scores) and saved["stage"] == "pred"
    assert saved["cache_identity"] and (out / "best" / "projection.safetensors").exists()


def test_fit_refuses_bad_caches(world, tmp_path):
    import shutil

    from hskcache.manifest import MANIFEST_KEY

    broken = tmp_path / "broken"
    shutil.copytree(world["cache"], broken)
    shard = broken / "layers" / "h1" / "values" / "c" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="'layers/h1/values' chunk 0 is damaged"):
        fit(base(world, tmp_path / "o", cache=str(broken)), show_progress=False)
    partial = tmp_path / "partial"
    shutil.copytree(world["cache"], partial)
    import zarr

    g = zarr.open_group(partial, mode="r+")
    g.attrs[MANIFEST_KEY] = {**g.attrs[MANIFEST_KEY], "status": "building"}
    with pytest.raises(CacheIncompleteError):
        fit(base(world, tmp_path / "o", cache=str(partial), verify=False), show_progress=False)
    other = make_bert(tmp_path / "other_vocab")
    (other / "vocab.txt").write_text((other / "vocab.txt").read_text() + "extra\n")
    from transformers import BertTokenizerFast

    from conftest import vocab_dict

    BertTokenizerFast(vocab=vocab_dict(other / "vocab.txt")).save_pretrained(other)
    with pytest.raises(CacheMismatchError, match="tokenizer"):
        fit(
            base(world, tmp_path / "o", cache=str(world["cache"]), init_from=str(other)),
            show_progress=False,
        )
    from hskcache.errors import TeacherError

    with pytest.raises(TeacherError, match="not a model folder"):
        fit(
            base(world, tmp_path / "o", cache=str(world["cache"]), init_from=str(tmp_path)),
            show_progress=False,
        )
    with pytest.raises(CacheMismatchError, match="max_length"):
        fit(
            base(world, tmp_path / "o", cache=str(world["cache"]), max_length=32),
            show_progress=False,
        )
    with pytest.raises(CacheMismatchError, match="student_layers"):
        fit(
            FitConfig(
                out=str(tmp_path / "o"), cache=str(world["cache"]), student="mini", init="random"
            ),
            show_progress=False,
        )


def test_end_to_end_cli(world, tmp_path):
    """finetune -> build -> fit -> eval through the commands a user types."""
    from hskcache.cli import app as cache_app

    runner = CliRunner()
    d, t = str(world["data"]), str(world["teacher"])
    r = runner.invoke(
        app,
        [
            "finetune",
            "--data",
            d,
            "--out",
            str(tmp_path / "teacher"),
            "--model",
            t,
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    teacher = tmp_path / "teacher" / "best"
    r = runner.invoke(
        cache_app,
        [
            "build",
            "--data",
            d,
            "--teacher",
            str(teacher),
            "--out",
            str(tmp_path / "c"),
            "--hsk",
            HSK,
            "--max-length",
            "16",
            "--student-layers",
            "2",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "fit",
            "--cache",
            str(tmp_path / "c"),
            "--out",
            str(tmp_path / "s"),
            "--student",
            "tiny",
            "--dev-data",
            d,
            "--hsk-epochs",
            "1",
            "--pred-epochs",
            "1",
            "--batch-size",
            "8",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["eval", str(tmp_path / "s" / "best"), "--data", d, "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["task"] == "sst2" and result["examples"] == 48
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0
    r = runner.invoke(
        app,
        [
            "fit",
            "--out",
            str(tmp_path / "x"),
            "--cache",
            str(tmp_path / "c"),
            "--online-teacher",
            t,
        ],
    )
    assert r.exit_code == 1 and "exactly one of --cache" in r.output


def test_online_batch_threshold_and_joint_mode(world, tmp_path):
    out = tmp_path / "bt"
    fit(
        base(
            world,
            out,
            online_teacher=str(world["teacher"]),
            data=str(world["data"]),
            hsk=HSK,
            max_length=16,
            batch_threshold=True,
            mode="joint",
            pred_epochs=1,
        ),
        show_progress=False,
    )
    losses = step_losses(out)
    assert [s for s, _ in losses] == ["joint"] * 6 and all(np.isfinite([x for _, x in losses]))
