"""`fit --group-by-length`: rows of similar length batched together inside each reader buffer.

Checked like the plain reader (every example once, determinism, resume mid-epoch, disjoint DDP
ranks), plus: batches really pad less, the option off gives the batches it always gave, and a
fit resumed mid-epoch equals an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hskcache.errors import ConfigError
from hsktrain.cli import app
from hsktrain.config import FitConfig
from hsktrain.loader import ArraySource, ChunkShuffleLoader, grouped_permutation
from hsktrain.study.grid import load_grid
from hsktrain.train import fit


def lengths(n: int) -> np.ndarray:
    """Mixed lengths, 1..64: mostly short rows with a long tail, as in GLUE."""
    return np.minimum(np.random.default_rng(7).geometric(0.06, n), 64).astype(np.int32)


def source(n=103, chunk_rows=8) -> ArraySource:
    return ArraySource({"id": np.arange(n), "lengths": lengths(n)}, chunk_rows)


def loader(**kw) -> ChunkShuffleLoader:
    kw = {"batch_size": 10, "seed": 1, "buffer_chunks": 3, "group_by_length": True, **kw}
    return ChunkShuffleLoader(kw.pop("src", None) or source(), **kw)


def ids(ld: ChunkShuffleLoader, epoch: int, start: int = 0) -> list[list[int]]:
    return [b["id"].tolist() for b in ld.iterate(epoch, start)]


def padding(ld: ChunkShuffleLoader, epoch: int) -> float:
    """Fraction of the padded batches' token slots that are padding."""
    pad = slots = 0
    for b in ld.iterate(epoch):
        slots += int(b["lengths"].max()) * len(b["lengths"])
        pad += int(b["lengths"].max()) * len(b["lengths"]) - int(b["lengths"].sum())
    return pad / slots


@pytest.mark.parametrize(("buffer_chunks", "batch_size"), [(1, 10), (3, 10), (3, 7), (20, 4)])
def test_every_example_once_per_epoch(buffer_chunks, batch_size):
    ld = loader(buffer_chunks=buffer_chunks, batch_size=batch_size)
    for epoch in range(3):
        batches = ids(ld, epoch)
        assert sorted(i for b in batches for i in b) == list(range(103))
        full, last = divmod(103, batch_size)
        assert [len(b) for b in batches] == [batch_size] * full + ([last] if last else [])
        assert len(batches) == ld.batches_per_epoch(epoch)
    for b in ld.iterate(0):
        assert (b["lengths"] == lengths(103)[b["id"]]).all()  # fields stay aligned


def test_drop_last_drops_only_the_final_partial_batch():
    batches = ids(loader(drop_last=True), 0)
    assert [len(b) for b in batches] == [10] * 10
    assert len(set(i for b in batches for i in b)) == 100


def test_deterministic_per_seed_and_epoch():
    assert ids(loader(), 0) == ids(loader(), 0)
    assert ids(loader(), 0) != ids(loader(), 1)
    assert ids(loader(), 0) != ids(loader(seed=2), 0)


@pytest.mark.parametrize("start", [1, 2, 3, 4, 5, 7, 10])
def test_resume_mid_epoch_equals_straight(start):
    """Buffers hold 24 rows (3 chunks of 8) and batches 10: batches 2, 4 and 7 straddle two
    buffers, so a resume lands both inside a buffer and on a straddling batch."""
    ld = loader(seed=5)
    assert ids(ld, 2, start) == ids(ld, 2)[start:]


def test_ranks_get_disjoint_chunks():
    loaders = [loader(seed=3, rank=r, world=3) for r in range(3)]
    seen = [set(i for b in ids(ld, 0) for i in b) for ld in loaders]
    assert set.union(*seen) == set(range(103)) and sum(map(len, seen)) == 103
    plain = [loader(seed=3, rank=r, world=3, group_by_length=False) for r in range(3)]
    assert seen == [set(i for b in ids(ld, 0) for i in b) for ld in plain]  # the same chunks


def test_batches_pad_less():
    """Hand-made mixed lengths: grouped batches waste far fewer token slots than shuffled ones."""
    src = source(n=2000, chunk_rows=50)
    for epoch in range(3):
        grouped = padding(loader(src=src, batch_size=16, buffer_chunks=4), epoch)
        plain = padding(
            loader(src=src, batch_size=16, buffer_chunks=4, group_by_length=False), epoch
        )
        assert grouped < plain / 2, (grouped, plain)


def test_batches_are_not_a_length_curriculum():
    """Batch order is shuffled after grouping: an epoch neither rises nor falls in length."""
    src = source(n=2000, chunk_rows=500)
    longest = [int(b["lengths"].max()) for b in loader(src=src, batch_size=16).iterate(0)]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    assert abs(np.corrcoef(np.arange(len(longest)), longest)[0, 1]) < 0.3


def test_grouped_permutation_puts_the_shortest_rows_at_the_buffer_edges():
    """The batches that straddle two buffers get each buffer's shortest rows."""
    lens = np.array([9, 1, 8, 2, 7, 3, 6, 5, 4, 10, 11, 12])
    perm = grouped_permutation(lens, batch_size=4, head=3, seed=0, epoch=0, group=0)
    assert sorted(perm) == list(range(12))
    # 3 rows finish the open batch, 2 full batches, 1 row opens the next one
    assert sorted(lens[perm[:3]]) == [1, 2, 3] and lens[perm[-1]] == 4
    middle = lens[perm[3:11]].reshape(2, 4)
    assert sorted(middle.ravel()) == [5, 6, 7, 8, 9, 10, 11, 12]
    # a buffer smaller than the open batch's need goes whole into it
    assert sorted(grouped_permutation(lens[:2], 4, head=3, seed=0, epoch=0, group=0)) == [0, 1]


def test_off_gives_the_batches_it_always_gave():
    """Pinned: epoch 1 of this loader as the reader wrote it before --group-by-length existed."""
    src = ArraySource({"id": np.arange(103), "lengths": (np.arange(103) * 7) % 23 + 1}, 8)
    ld = ChunkShuffleLoader(src, 10, seed=4, buffer_chunks=3)
    before = [
        7,
        32,
        88,
        6,
        91,
        94,
        37,
        33,
        36,
        39,
        93,
        3,
        92,
        4,
        2,
        89,
        95,
        5,
        34,
        1,
        35,
        90,
        38,
        0,
        83,
        62,
        61,
        77,
        63,
        85,
        80,
        72,
        78,
        56,
        60,
        86,
        59,
        74,
        75,
        57,
        81,
        76,
        73,
        79,
        84,
        87,
        58,
        82,
        40,
        41,
        19,
        8,
        21,
        44,
        15,
        42,
        10,
        14,
        18,
        43,
        9,
        12,
        47,
        13,
        45,
        22,
        46,
        17,
        20,
        16,
        23,
        11,
        29,
        27,
        24,
        100,
        53,
        55,
        51,
        30,
        102,
        48,
        50,
        99,
        31,
        25,
        28,
        98,
        26,
        97,
        54,
        49,
        101,
        52,
        96,
        66,
        68,
        65,
        71,
        69,
        67,
        64,
        70,
    ]
    assert [i for b in ids(ld, 1) for i in b] == before
    assert [i for b in ids(ld, 1, 4) for i in b] == before[40:]
    grouped = [
        i for b in ids(ChunkShuffleLoader(src, 10, 4, 3, group_by_length=True), 1) for i in b
    ]
    assert grouped != before and sorted(grouped) == sorted(before)


def test_sweep_passes_it_through_fit_options(tmp_path):
    study = tmp_path / "study.toml"
    study.write_text('study = "s"\ntasks = ["MRPC"]\n[fit]\ngroup_by_length = true\n')
    assert load_grid(str(study), {}).fit == {"group_by_length": True}
    study.write_text('study = "s"\ntasks = ["MRPC"]\n[fit]\ngroup_by_length = "yes"\n')
    with pytest.raises(ConfigError, match="^.*: fit: group_by_length must be bool, not 'yes'$"):
        load_grid(str(study), {})


# --- through fit ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(fit_world) -> dict:
    return fit_world


def cfg(world, out: Path, **kw) -> FitConfig:
    defaults = dict(
        student="tiny",
        hsk_epochs=2,
        pred_epochs=1,
        batch_size=8,
        buffer_chunks=2,
        cache=str(world["cache"]),
        group_by_length=True,
    )
    return FitConfig(out=str(out), **{**defaults, **kw})


def losses(out: Path) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_fit_resumed_mid_epoch_equals_uninterrupted(world, tmp_path):
    fit(cfg(world, tmp_path / "a"), show_progress=False)
    fit(cfg(world, tmp_path / "b", max_steps=4), show_progress=False)  # mid-epoch (6 a epoch)
    fit(cfg(world, tmp_path / "b", resume=True), show_progress=False)
    assert losses(tmp_path / "b") == losses(tmp_path / "a") and len(losses(tmp_path / "a")) == 18
    fit(cfg(world, tmp_path / "c", group_by_length=False), show_progress=False)
    assert losses(tmp_path / "c") != losses(tmp_path / "a")  # the option reaches the loader


def test_resume_refuses_switching_it_or_the_buffer(world, tmp_path):
    out = tmp_path / "r"
    fit(cfg(world, out, max_steps=2), show_progress=False)
    message = "was started with --group-by-length, not --no-group-by-length; resume with the same"
    with pytest.raises(ConfigError, match=message):
        fit(cfg(world, out, resume=True, group_by_length=False), show_progress=False)
    # the buffer decides which rows a position has seen, grouped or not
    message = "was started with --buffer-chunks 2, not 3; resume with the same value"
    with pytest.raises(ConfigError, match=message):
        fit(cfg(world, out, resume=True, buffer_chunks=3), show_progress=False)
    assert len(losses(out)) == 2


def test_cli_flag(world, tmp_path):
    out = tmp_path / "cli"
    args = ["fit", "--cache", str(world["cache"]), "--out", str(out), "--student", "tiny"]
    args += ["--mode", "pred", "--pred-epochs", "1", "--max-steps", "2", "--quiet"]
    r = CliRunner().invoke(app, [*args, "--group-by-length"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "config.json").read_text())["config"]["group_by_length"] is True
    assert "--group-by-length" in CliRunner().invoke(app, ["fit", "--help"]).output
