"""`hsktrain fit`: offline == online, exact resume, stages, best checkpoint, refusals, e2e."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import make_bert
from hskcache.build import build_cache
from hskcache.config import BuildConfig
from hskcache.errors import (
    CacheError,
    CacheIncompleteError,
    CacheMismatchError,
    ConfigError,
    HskError,
)
from hsktrain.cli import app
from hsktrain.config import FitConfig
from hsktrain.prepare import prepare
from hsktrain.step import (
    Distiller,
    NonFiniteLossError,
    lr_schedule,
    make_optimizer,
    make_scaler,
    train_step,
)
from hsktrain.train import fit

HSK = "1l_4t_0.25h"


@pytest.fixture(scope="module")
def world(fit_world) -> dict:
    return fit_world


def step_losses(out: Path) -> list[tuple[str, float]]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["stage"], r["loss"]) for r in rows if "loss" in r]


def epoch_losses(out: Path) -> list[tuple[str, int, float]]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [
        (r["stage"], r["epoch"], r["train_loss"], r.get("zero_loss"))
        for r in rows
        if "train_loss" in r
    ]


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
    # ... and that tolerance tells batches apart: neighbouring steps' losses are not within it,
    # so the equality above could fail
    hsk = np.array([x for s, x in a if s == "hsk"])
    assert not np.allclose(hsk[1:], hsk[:-1], rtol=2e-3, atol=1e-5)


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
    before = json.loads((tmp_path / "b" / "last" / "state.json").read_text())["loop"]["seconds"]
    t0 = time.perf_counter()
    resumed = fit(
        base(
            world,
            tmp_path / "b",
            cache=str(world["cache"]),
            dev_data=str(world["data"]),
            resume=True,
        ),
        show_progress=False,
    )
    wall = time.perf_counter() - t0
    # the run's seconds: the first process's up to its save, plus all of the second's
    assert before > 0 and wall < resumed.seconds <= before + wall
    assert step_losses(tmp_path / "b") == step_losses(tmp_path / "a")
    # the epoch cut by the resume still averages all its batches, not only those after it
    assert epoch_losses(tmp_path / "b") == epoch_losses(tmp_path / "a")
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
    # the HSK stage logs its scale: the all-zero prediction's loss, each step and its mean
    steps = [r for r in records if "loss" in r]
    zeros = [r["zero_loss"] for r in steps if r["stage"] == "hsk"]
    assert len(zeros) == 6 and all(z > 0 for z in zeros) and len(set(zeros)) > 1
    assert epochs[0]["zero_loss"] == pytest.approx(sum(zeros) / len(zeros))
    assert not any("zero_loss" in r for r in [*steps, *epochs] if r["stage"] == "pred")
    pred_scores = [r["dev"]["accuracy"] for r in epochs if r["stage"] == "pred"]
    assert best.metrics["accuracy"] == max(pred_scores) and best.best == out / "best"
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
    with pytest.raises(
        CacheError, match="object 'layers/h1/values/c/0/0/0' does not match its recorded sha256"
    ):
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
            hsk_epochs=None,  # joint has no HSK stage: giving its epochs is an error
            pred_epochs=1,
        ),
        show_progress=False,
    )
    losses = step_losses(out)
    assert [s for s, _ in losses] == ["joint"] * 6 and all(np.isfinite([x for _, x in losses]))


# --- the loop's parts, pinned -------------------------------------------------------------


def test_pinned_losses(world, tmp_path):
    """A tiny fit's first losses, recorded once (1 thread, seed 0), as torchtune pins recipes.

    A change to the loss, the data order, the init, the optimizer or the RNG moves them.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(
            base(
                world,
                tmp_path / "p",
                cache=str(world["cache"]),
                hsk_epochs=1,
                pred_epochs=1,
                pred_lr=5e-3,  # moves the logits off uniform, so stage-2 losses say something
                hard_weight=1.0,
            ),
            show_progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    losses = [x for _, x in step_losses(tmp_path / "p")]
    np.testing.assert_allclose(losses[:4], PINNED_HSK, rtol=1e-4)
    np.testing.assert_allclose(losses[6:10], PINNED_PRED, rtol=1e-4)


PINNED_HSK = [0.6150786, 0.6155230, 0.5040452, 0.5976520]
PINNED_PRED = [1.3868916, 1.3863386, 1.3804536, 1.3869057]


def test_warmup_sets_lr_per_step(world, tmp_path):
    fit(
        base(world, tmp_path / "w", cache=str(world["cache"]), warmup=0.5, mode="hsk"),
        show_progress=False,
    )
    rows = [json.loads(x) for x in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if "lr" in r]
    # 2 epochs x 6 batches = 12 steps; warmup 0.5 -> 6 steps rising linearly to 5e-5, then flat
    expected = [5e-5 * (i + 1) / 6 for i in range(6)] + [5e-5] * 6
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)
    assert lr_schedule(0, 0, 1.0) == 1.0 and lr_schedule(1, 4, 1.0) == 0.5


def test_linear_decay_falls_to_zero_at_each_stages_end(world, tmp_path):
    cfg = base(world, tmp_path / "d", cache=str(world["cache"]), warmup=0.25, lr_decay="linear")
    fit(cfg, show_progress=False)
    rows = [json.loads(x) for x in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    lrs = {s: [r["lr"] for r in rows if "lr" in r and r["stage"] == s] for s in ("hsk", "pred")}
    # each stage: 2 epochs x 6 batches = 12 steps; ceil(0.25 x 12) = 3 warmup steps rising to
    # the peak, then (12 - step) / 9 of it: 9/9 at step 3 down to 1/9 at step 11
    for stage, peak in (("hsk", 5e-5), ("pred", 2e-5)):
        want = [peak * (i + 1) / 3 for i in range(3)] + [peak * (12 - i) / 9 for i in range(3, 12)]
        np.testing.assert_allclose(lrs[stage], want, rtol=1e-12)
    assert lr_schedule(5, 0, 1.0, total=10) == 0.5 and lr_schedule(10, 0, 1.0, total=10) == 0.0
    with pytest.raises(ConfigError, match="--lr-decay must be one of"):
        replace(cfg, lr_decay="cosine").validate()


def _distiller(world, tmp_path, **kw):
    cfg = base(world, tmp_path / "d", cache=str(world["cache"]), **kw)
    cfg.validate()
    cfg = cfg.resolved()
    torch.manual_seed(0)
    run = prepare(cfg)
    net = Distiller(run.model, run.proj, run.teacher_width, run.regression)
    return cfg, run, net, run.make_batch(next(run.loader.iterate(0)))


def test_no_decay_groups_are_biases_and_layernorms(world, tmp_path):
    _, _, net, _ = _distiller(world, tmp_path)
    opt = make_optimizer(net, 1e-3, 0.01)
    names = {id(p): n for n, p in net.named_parameters()}
    decay, exempt = ([names[id(p)] for p in g["params"]] for g in opt.param_groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    assert sorted(exempt) == sorted(NO_DECAY)
    assert len(decay) + len(exempt) == len(names)  # every parameter, the projection's too
    assert "proj.weight" in decay


NO_DECAY = [
    "model.bert.embeddings.LayerNorm.bias",
    "model.bert.embeddings.LayerNorm.weight",
    *[
        f"model.bert.encoder.layer.{i}.{part}"
        for i in range(2)
        for part in (
            "attention.self.query.bias",
            "attention.self.key.bias",
            "attention.self.value.bias",
            "attention.output.dense.bias",
            "attention.output.LayerNorm.weight",
            "attention.output.LayerNorm.bias",
            "intermediate.dense.bias",
            "output.dense.bias",
            "output.LayerNorm.weight",
            "output.LayerNorm.bias",
        )
    ],
    "model.bert.pooler.dense.bias",
    "model.classifier.bias",
    "proj.bias",
]


def test_clipping_covers_student_and_projection(world, tmp_path):
    cfg, _, net, b = _distiller(world, tmp_path, max_grad_norm=1e-3)
    opt = make_optimizer(net, 0.0, 0.0)  # lr 0: only the gradients matter
    train_step(net, opt, make_scaler("cpu", "none"), b, "hsk", 0.0, cfg)
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert net.proj.weight.grad is not None
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert total <= 1e-3 * (1 + 1e-4)


def test_hard_weight_adds_weighted_label_ce(world, tmp_path):
    cfg, run, net, b = _distiller(world, tmp_path)
    net.eval()  # no dropout: the three forwards see the same logits
    with torch.no_grad():
        soft = net(b, "pred", cfg)
        hard = net(b, "pred", replace(cfg, hard_weight=2.0))
        logits = run.model(**b.model_inputs(run.model)).logits
    ce = torch.nn.functional.cross_entropy(logits, b.labels)
    torch.testing.assert_close(hard - soft, 2.0 * ce)
    # and in the loop: the same run with --hard-weight logs a larger first stage-2 loss
    outs = {}
    for hw in (0.0, 2.0):
        out = tmp_path / f"hw{hw}"
        fit(
            base(
                world,
                out,
                cache=str(world["cache"]),
                mode="pred",
                hsk_epochs=None,
                pred_epochs=1,
                hard_weight=hw,
            ),
            show_progress=False,
        )
        outs[hw] = [x for _, x in step_losses(out)]
    assert outs[2.0][0] > outs[0.0][0] + 0.1


# --- defects, each refused or recovered -----------------------------------------------------


def test_resume_of_finished_run_touches_nothing(world, tmp_path):
    out = tmp_path / "f"
    fit(
        base(world, out, cache=str(world["cache"]), hsk_epochs=1, pred_epochs=1),
        show_progress=False,
    )
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(
        ConfigError, match="this run finished at step 12; there is nothing to resume"
    ):
        fit(
            base(world, out, cache=str(world["cache"]), hsk_epochs=1, pred_epochs=1, resume=True),
            show_progress=False,
        )
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_non_finite_loss_stops_with_one_line(world, tmp_path, monkeypatch):
    from hsktrain import batch as batches

    real = batches.from_cache

    def poisoned(rows, *a):
        b = real(rows, *a)
        b.layers[0].values[0] = float("nan")
        return b

    monkeypatch.setattr(batches, "from_cache", poisoned)
    with pytest.raises(
        NonFiniteLossError, match=r"^step 1 \(hsk stage, epoch 0\): the loss is nan"
    ):
        fit(base(world, tmp_path / "n", cache=str(world["cache"])), show_progress=False)
    assert not (tmp_path / "n" / "best").exists() and not (tmp_path / "n" / "last").exists()


@pytest.mark.parametrize("layout", ["old-only", "old-and-tmp"])
def test_resume_recovers_a_kill_between_the_renames(world, tmp_path, layout):
    import shutil

    kw = dict(cache=str(world["cache"]), hsk_epochs=1, pred_epochs=1)
    fit(base(world, tmp_path / "a", **kw), show_progress=False)
    out = tmp_path / "b"
    fit(base(world, out, max_steps=9, **kw), show_progress=False)
    if layout == "old-and-tmp":  # killed after `last` -> `last.old`, with `last.tmp` complete
        shutil.copytree(out / "last", out / "last.tmp")
    (out / "last").rename(out / "last.old")
    fit(base(world, out, resume=True, **kw), show_progress=False)
    assert step_losses(out) == step_losses(tmp_path / "a")
    assert not (out / "last.old").exists() and not (out / "last.tmp").exists()
    wa = load_file(tmp_path / "a" / "best" / "model.safetensors")
    wb = load_file(out / "best" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_refuses_another_runs_settings(world, tmp_path):
    out = tmp_path / "r"
    fit(base(world, out, cache=str(world["cache"]), max_steps=2), show_progress=False)
    for change, message in (
        (dict(batch_size=4), "--resume: .* was started with --batch-size 8, not 4"),
        (dict(seed=1), "was started with --seed 0, not 1"),
        (dict(student="mini", init="random"), "was started with --student tiny, not mini"),
        (dict(mode="hsk"), "was started with --mode two-stage, not hsk"),
    ):
        with pytest.raises(ConfigError, match=message):
            fit(
                base(world, out, cache=str(world["cache"]), resume=True, **change),
                show_progress=False,
            )
    other = build_cache(
        BuildConfig(
            data=str(world["data"]),
            out=str(tmp_path / "other"),
            teacher=str(world["teacher"]),
            hsk="1l_2t_0.25h",
            max_length=16,
            chunk_rows=8,
            student_layers=2,
        ),
        show_progress=False,
    )
    with pytest.raises(ConfigError, match=r"--resume: the run was trained on cache \w+, not \w+"):
        fit(base(world, out, cache=str(other), resume=True), show_progress=False)
    assert len(step_losses(out)) == 2  # the refusals wrote nothing


def test_bad_settings_are_one_line_each(world, tmp_path, monkeypatch):
    c = str(world["cache"])
    for kw, message in (
        (dict(hsk_epochs=0), "--hsk-epochs must be >= 1 \\(got 0\\)"),
        (dict(limit=5), "--limit: not with --cache \\(it holds the rows\\)"),
        (dict(data=str(world["data"])), "--data: not with --cache"),
        (dict(hsk="full", length="left"), "--hsk, --length: online selection only"),
        (dict(dev_limit=3), "--dev-limit needs --dev-data"),
        (dict(batch_size="8"), "batch_size must be int, not '8'"),
        (dict(amp="fp16"), "--amp fp16 needs --device cuda"),
    ):
        with pytest.raises(ConfigError, match=message):
            fit(base(world, tmp_path / "o", cache=c, **kw), show_progress=False)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="--batch-size 8 is the global batch and must split"):
        fit(base(world, tmp_path / "o", cache=c), show_progress=False)
    monkeypatch.delenv("WORLD_SIZE")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="--out is a file"):
        fit(base(world, tmp_path / "file", cache=c), show_progress=False)
    assert not (tmp_path / "o").exists()  # refused before the run folder was made
    with pytest.raises(CacheMismatchError, match="max_length"):
        fit(base(world, tmp_path / "o", cache=c, max_length=32), show_progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda(world, tmp_path):
    with pytest.raises(ConfigError, match="sees no CUDA GPU here; use --device cpu"):
        fit(
            base(world, tmp_path / "o", cache=str(world["cache"]), device="cuda"),
            show_progress=False,
        )


def test_full_disk_is_one_line(world, tmp_path, monkeypatch):
    import errno

    from hsktrain import checkpoint

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save_file", full)
    with pytest.raises(HskError, match="disk full; last/ holds the last complete checkpoint"):
        fit(base(world, tmp_path / "o", cache=str(world["cache"])), show_progress=False)


def test_cli_says_what_was_written(world, tmp_path):
    runner = CliRunner()
    c, d = str(world["cache"]), str(world["data"])
    common = ["--student", "tiny", "--batch-size", "8", "--quiet", "--cache", c]
    r = runner.invoke(
        app,
        [
            "fit",
            "--out",
            str(tmp_path / "h"),
            "--mode",
            "hsk",
            "--hsk-epochs",
            "1",
            "--dev-data",
            d,
            *common,
        ],
    )
    assert r.exit_code == 0, r.output
    wrote = f"done: wrote {tmp_path / 'h' / 'last'} (--mode hsk scores no dev checkpoint)"
    assert wrote in r.output
    assert not (tmp_path / "h" / "best").exists()
    r = runner.invoke(app, ["fit", "--out", str(tmp_path / "m"), "--max-steps", "2", *common])
    assert r.exit_code == 0, r.output
    assert "(stopped at step 2 (--max-steps))" in r.output and "best" not in r.output
    # the student's size, counted on the weights it saved
    n = sum(v.numel() for v in load_file(tmp_path / "m" / "last" / "model.safetensors").values())
    assert f"student: 2 layers x 16, {n:,} parameters" in r.output
    # `out` from the TOML file alone
    toml = tmp_path / "fit.toml"
    toml.write_text(
        f'out = "{tmp_path / "t"}"\ncache = "{c}"\nstudent = "tiny"\nbatch_size = 8\n'
        "max_steps = 1\n"
    )
    r = runner.invoke(app, ["fit", "--config", str(toml), "--quiet"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "t" / "last" / "state.json").exists()
    (tmp_path / "file").write_text("x")
    r = runner.invoke(app, ["fit", "--out", str(tmp_path / "file"), *common])
    assert r.exit_code == 1 and r.output.strip().endswith(
        "--out is a file; give a folder for the run"
    )


def test_finetune_errors_use_finetune_names(world, tmp_path):
    runner = CliRunner()
    d, t = str(world["data"]), str(world["teacher"])
    for args, message in (
        (["--epochs", "0"], "--epochs must be >= 1 (got 0)"),
        (["--lr", "0"], "--lr must be > 0 (got 0.0)"),
        (["--limit", "-3"], "--limit must be >= 1 (got -3)"),
        (["--model", str(tmp_path)], "not a model folder (no config.json)"),
    ):
        args = ["--model", t, *args] if "--model" not in args else args
        r = runner.invoke(app, ["finetune", "--data", d, "--out", str(tmp_path / "o"), *args])
        assert r.exit_code == 1 and message in r.output, r.output
        assert "pred_epochs" not in r.output and "init-from" not in r.output
    (tmp_path / "file").write_text("x")
    r = runner.invoke(app, ["finetune", "--data", d, "--model", t, "--out", str(tmp_path / "file")])
    assert r.exit_code == 1 and "--out is a file" in r.output
    assert not (tmp_path / "o").exists()


def test_amp_bf16_autocast_runs_on_cpu(world, tmp_path):
    """The autocast path (CUDA's too, by dtype) runs; bf16 losses stay near fp32's."""
    kw = dict(cache=str(world["cache"]), max_steps=3)
    fit(base(world, tmp_path / "fp32", **kw), show_progress=False)
    fit(base(world, tmp_path / "bf16", amp="bf16", **kw), show_progress=False)
    a = [x for _, x in step_losses(tmp_path / "fp32")]
    b = [x for _, x in step_losses(tmp_path / "bf16")]
    assert a != b  # bf16 rounding shows: the forward did run under autocast
    np.testing.assert_allclose(b, a, rtol=5e-2)


def test_fit_reads_table_columns_like_build(tmp_path):
    """`--text-column/--label-column` name a table's columns for --data and --dev-data."""
    from conftest import SENTENCES

    teacher = make_bert(tmp_path / "t")
    table = tmp_path / "reviews.tsv"
    table.write_text("review\tstars\n" + "".join(f"{s}\t{y}\n" for s, y in SENTENCES))
    cfg = FitConfig(
        out=str(tmp_path / "run"),
        mode="ce",
        data=str(table),
        dev_data=str(table),
        text_column="review",
        label_column="stars",
        init_from=str(teacher),
        student="tiny",
        pred_epochs=1,
    )
    result = fit(cfg, show_progress=False)
    assert 0.0 <= result.metrics["accuracy"] <= 1.0 and result.best is not None
    # the dev rows' one-answer floor (a "custom" task: accuracy alone), and its verdict
    share = sum(y for _, y in SENTENCES) / len(SENTENCES)
    assert result.one_answer == pytest.approx({"accuracy": max(share, 1 - share)})
    cleared = result.metrics["accuracy"] > max(share, 1 - share) + 0.01
    assert (result.warning == "") == cleared
    with pytest.raises(HskError, match="no column 'text'"):
        fit(replace(cfg, out=str(tmp_path / "run2"), text_column=None), show_progress=False)
    with pytest.raises(ConfigError, match="--text-column: name columns of --data or --dev-data"):
        fit(FitConfig(out=str(tmp_path / "r3"), cache="c", text_column="x"), show_progress=False)
