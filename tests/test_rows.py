"""Unlabelled rows in a cache: teacher targets only.

A build over text with no label column (a text file, a table without it) or past `--labelled N`
stores the sentinel label (-1; NaN for regression) and counts those rows in the manifest; CE and
every hard-label term skip them, the KD losses train on them, and `derive` copies them exactly.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SENTENCES, write_sst2
from hskcache.build import build_cache
from hskcache.config import BuildConfig, DeriveConfig
from hskcache.derive import derive_cache
from hskcache.errors import ConfigError, DataFormatError
from hskcache.inspect import describe
from hskcache.reader import open_cache
from hsktrain.config import FitConfig
from hsktrain.losses import hard_label_loss, prediction_loss
from hsktrain.train import fit

BASE = dict(max_length=16, chunk_rows=4, chunks_per_shard=2, batch_size=3, student_layers=2)


def build(data, out, teacher, **kw):
    cfg = BuildConfig(data=str(data), out=str(out), teacher=str(teacher), **{**BASE, **kw})
    return open_cache(str(build_cache(cfg, show_progress=False)))


def write_text(path, n: int = 10):
    """A plain text file: one sentence a line, with a blank line (skipped) in the middle."""
    lines = [s for s, _ in SENTENCES[:n]]
    path.write_text("\n".join(lines[:3] + [""] + lines[3:]) + "\n")
    return path


def test_hard_label_loss_is_the_ce_over_labelled_rows_alone():
    torch.manual_seed(0)
    logits = torch.randn(5, 3)
    labels = torch.tensor([2, -1, 0, -1, 1])
    by_hand = F.cross_entropy(logits[[0, 2, 4]], torch.tensor([2, 0, 1]))
    assert torch.allclose(hard_label_loss(logits, labels, False), by_hand, atol=1e-6)
    # the hard term of the prediction loss skips them too; the soft CE keeps every row
    teacher = torch.randn(5, 3)
    soft = -(F.softmax(teacher, -1) * F.log_softmax(logits, -1)).sum(-1).mean()
    mixed = prediction_loss(logits, teacher, labels, 1.0, 0.5, False)
    assert torch.allclose(mixed, soft + 0.5 * by_hand, atol=1e-6)
    none = hard_label_loss(logits, torch.full((5,), -1), False)
    assert none.item() == 0.0  # not NaN
    # regression: NaN is the sentinel, MSE over the labelled rows
    pred, gold = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([1.5, math.nan, 2.0])
    assert hard_label_loss(pred, gold, True).item() == pytest.approx((0.25 + 1.0) / 2)
    assert hard_label_loss(pred, torch.full((3,), math.nan), True).item() == 0.0


def test_labelled_n_counts_and_identity(tmp_path, tiny_bert):
    data = write_sst2(tmp_path / "SST-2")
    full = build(data, tmp_path / "full", tiny_bert)
    part = build(data, tmp_path / "part", tiny_bert, labelled=10)
    labels = part.read(0, part.num_examples, ["labels"])["labels"]
    gold = np.array([y for _, y in SENTENCES])
    assert labels[:10].tolist() == gold[:10].tolist()
    assert labels[10:].tolist() == [-1] * (len(SENTENCES) - 10)
    assert part.info.counts.num_unlabelled == len(SENTENCES) - 10
    assert full.info.counts.num_unlabelled == 0
    assert part.info.identity != full.info.identity  # the fingerprint covers the labels
    # the teacher's targets are the same: only the labels differ
    a, b = (c.read(0, c.num_examples, ["logits"])["logits"] for c in (full, part))
    assert np.array_equal(a, b)
    with pytest.raises(ConfigError, match="labelled must be >= 0"):
        build(data, tmp_path / "bad", tiny_bert, labelled=-1)


def test_derive_keeps_unlabelled_rows_exactly(tmp_path, tiny_bert):
    data = write_sst2(tmp_path / "SST-2")
    src = build(data, tmp_path / "src", tiny_bert, labelled=7, hsk="1l_4t_0.5h")
    direct = build(data, tmp_path / "direct", tiny_bert, labelled=7, hsk="1l_2t_0.5h")
    cfg = DeriveConfig(
        src=src.url, out=str(tmp_path / "cut"), hsk="1l_2t_0.5h", chunk_rows=4, chunks_per_shard=2
    )
    cut = open_cache(str(derive_cache(cfg, show_progress=False)))
    assert cut.info.counts == direct.info.counts and cut.info.counts.num_unlabelled == 19
    # every object but the root zarr.json (the manifest names its parent) equals a direct build's
    files = {
        f.relative_to(tmp_path / "direct").as_posix(): f.read_bytes()
        for f in sorted((tmp_path / "direct").rglob("*"))
        if f.is_file() and f != tmp_path / "direct" / "zarr.json"
    }
    assert "labels/c/0" in files and "logits/c/0/0" in files
    for key, data in files.items():
        assert (tmp_path / "cut" / key).read_bytes() == data, key


def test_text_file_builds_a_task_agnostic_cache(tmp_path, tiny_bert):
    text = write_text(tmp_path / "corpus.txt")
    general = build(text, tmp_path / "general", tiny_bert)
    d = general.info.data
    assert d.task_agnostic and d.num_logits == 0 and d.num_examples == 10  # blank line skipped
    assert general.info.counts.num_unlabelled == 10
    assert not (tmp_path / "general" / "logits").exists()
    rows = general.read(0, 10, None)
    assert "logits" not in rows and rows["labels"].tolist() == [-1] * 10
    # the same lines for a named task keep the teacher's logits: another cache, another identity
    tasked = build(text, tmp_path / "tasked", tiny_bert, task="sst2")
    assert not tasked.info.data.task_agnostic and tasked.info.counts.num_unlabelled == 10
    assert tasked.read(0, 10, ["logits"])["logits"].shape == (10, 2)
    assert tasked.info.data.fingerprint == d.fingerprint
    assert tasked.info.identity != general.info.identity
    said = describe(general)
    assert said["data"] == (
        f"custom train from {text} (10 examples, 10 unlabelled, task-agnostic: HSK only, "
        f"fingerprint {d.fingerprint[:12]})"
    )
    assert not said["teacher_head_initialised"]  # no logits stored: the head is not read
    manifest = json.loads((tmp_path / "general" / "zarr.json").read_text())
    assert manifest["attributes"]["hskcache"]["data"]["task_agnostic"] is True


def test_text_file_refusals(tmp_path, tiny_bert):
    text = write_text(tmp_path / "corpus.txt")
    with pytest.raises(DataFormatError) as e:
        build(text, tmp_path / "o", tiny_bert, task="mrpc")
    assert str(e.value) == (
        f"{text}: a text file holds one text per line, and task 'mrpc' takes sentence pairs; "
        "give the pairs as a table (tsv/csv/jsonl/parquet) with two text columns"
    )
    with pytest.raises(DataFormatError, match="a text file has no columns"):
        build(text, tmp_path / "o", tiny_bert, text_column="x")


def test_table_without_label_column_is_unlabelled(tmp_path, tiny_bert):
    table = tmp_path / "extra.csv"
    table.write_text("sentence\n" + "".join(f"{s}\n" for s, _ in SENTENCES[:6]))
    cache = build(table, tmp_path / "c", tiny_bert, task="sst2")
    assert cache.info.counts.num_unlabelled == 6 and not cache.info.data.task_agnostic
    with pytest.raises(DataFormatError, match="no column 'gold'"):
        build(table, tmp_path / "c2", tiny_bert, task="sst2", label_column="gold")


def fit_cfg(cache, out, **kw) -> FitConfig:
    defaults = dict(student="tiny", pred_epochs=1, batch_size=4, buffer_chunks=2)
    if kw.get("mode", "two-stage") in ("two-stage", "hsk"):
        defaults["hsk_epochs"] = 1
    return FitConfig(out=str(out), cache=str(cache), **{**defaults, **kw})


def steps(out) -> list[str]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["stage"] for r in rows if "loss" in r]


def test_fit_trains_kd_on_every_row_and_ce_on_labelled_rows(tmp_path, tiny_bert):
    data = write_sst2(tmp_path / "SST-2")
    cache = build(data, tmp_path / "c", tiny_bert, labelled=10)
    fit(fit_cfg(cache.url, tmp_path / "kd"), show_progress=False)
    assert steps(tmp_path / "kd") == ["hsk"] * 7 + ["pred"] * 7  # 26 rows, batches of 4
    fit(fit_cfg(cache.url, tmp_path / "ce", mode="ce"), show_progress=False)
    assert steps(tmp_path / "ce") == ["ce"] * 3  # the 10 labelled rows alone
    with pytest.raises(DataFormatError) as e:
        fit(fit_cfg(cache.url, tmp_path / "dev", dev_data=str(write_text(tmp_path / "d.txt"))))
    assert str(e.value) == (
        f"{tmp_path / 'd.txt'}: 10 of 10 dev rows have no label (a test split, or text without "
        "a label column?) and cannot be scored; pass a labelled --dev-data, or none"
    )


def test_fit_refuses_modes_the_rows_cannot_train(tmp_path, tiny_bert):
    general = build(write_text(tmp_path / "t.txt"), tmp_path / "g", tiny_bert)
    with pytest.raises(ConfigError) as e:
        fit(fit_cfg(general.url, tmp_path / "o"), show_progress=False)
    assert str(e.value) == (
        f"{general.url}: a task-agnostic cache (unlabelled rows, no task) holds HSK only, no "
        "logits or labels, so --mode two-stage has nothing to train on; use --mode hsk (a "
        "general student), or build the cache with --task for the teacher's logits"
    )
    tasked = build(write_text(tmp_path / "t.txt"), tmp_path / "s", tiny_bert, task="sst2")
    with pytest.raises(ConfigError) as e:
        fit(fit_cfg(tasked.url, tmp_path / "o", mode="ce"), show_progress=False)
    assert str(e.value) == (
        f"{tasked.url}: every row is unlabelled, so --mode ce has no gold label to train on; "
        "use a KD mode (two-stage, joint, pred, hsk) or a cache with labelled rows"
    )


def test_manifests_from_before_read_as_all_labelled(tmp_path, tiny_bert):
    from hskcache.manifest import ManifestView, compute_identity, validate_manifest

    cache = build(write_sst2(tmp_path / "SST-2"), tmp_path / "c", tiny_bert)
    old = json.loads(json.dumps(cache.manifest))
    for section, key in (
        ("counts", "num_unlabelled"),
        ("data", "task_agnostic"),
        ("data", "augment"),
    ):
        del old[section][key]
    validate_manifest(old, "old")  # a cache built before these fields stays readable
    view = ManifestView.from_dict(old)
    assert view.counts.num_unlabelled == 0 and not view.data.task_agnostic
    assert view.data.augment is None
    # the fields at their defaults leave the identity as it was before them
    assert compute_identity(old) == cache.info.identity
