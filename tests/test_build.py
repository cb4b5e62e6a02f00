"""`hskcache build` on tiny teachers: exact round trips, crash-resume, verify, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from transformers import AutoModelForSequenceClassification

from hskcache.build import build_cache, compute_batch, scatter_back, teacher_order
from hskcache.codec import decode_dims, decode_values
from hskcache.config import BuildConfig
from hskcache.data import load_split
from hskcache.errors import CacheError, CacheIncompleteError, CacheMismatchError, HskError
from hskcache.manifest import MANIFEST_KEY
from hskcache.reader import open_cache
from hskcache.targets import plan_selection
from hskcache.teacher import ClsScoreProbe, load_teacher
from hskcache.tokenize import Encoded, tokenize
from hskcache.verify import verify_cache


def make_cfg(data: Path, out: str | Path, teacher: Path, **kw) -> BuildConfig:
    base = dict(
        data=str(data),
        out=str(out),
        teacher=str(teacher),
        hsk="1l_4t_0.25h",
        max_length=16,
        chunk_rows=4,
        chunks_per_shard=2,
        batch_size=3,
    )
    return BuildConfig(**{**base, **kw})


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def reference(cfg: BuildConfig) -> dict[str, np.ndarray]:
    """What the builder computes, batch by batch, without the store in between."""
    ex = load_split(cfg.data, cfg.task, cfg.split, limit=cfg.limit)
    teacher = load_teacher(cfg.teacher, 2)
    t = teacher.config
    plan = plan_selection(
        cfg.selection, t.num_hidden_layers, t.hidden_size, cfg.max_length, cfg.value_dtype
    )
    enc = tokenize(teacher.tokenizer, ex, cfg.max_length)
    probe = ClsScoreProbe(teacher.model, {la["score_attention"] for la in plan.layers} - {None})
    shard = cfg.chunk_rows * cfg.chunks_per_shard
    rows: dict[int, dict] = {}  # row index -> its arrays
    for lo in range(0, len(ex), shard):
        hi = min(len(ex), lo + shard)
        # each shard's rows in the teacher's order, batches of consecutive ones
        order = lo + teacher_order(enc.lengths[lo:hi], cfg.batch_order)
        for b in range(0, len(order), cfg.batch_size):
            idx = order[b : b + cfg.batch_size]
            sub = Encoded(enc.input_ids[idx], enc.token_type_ids[idx], enc.lengths[idx])
            part = compute_batch(
                teacher, probe, plan, sub, ex.labels[idx], 0, len(idx), cfg.value_dtype, "cpu"
            )
            rows |= {int(r): {k: v[j] for k, v in part.items()} for j, r in enumerate(idx)}
    return {k: np.stack([rows[i][k] for i in range(len(ex))]) for k in rows[0]}


@pytest.mark.parametrize(
    "value_dtype,batch_order",
    [("float16", "length"), ("bfloat16", "length"), ("int8", "length"), ("float16", "data")],
)
def test_round_trip_exact(tmp_path, sst2_dir, tiny_bert, value_dtype, batch_order):
    cfg = make_cfg(
        sst2_dir, tmp_path / "c", tiny_bert, value_dtype=value_dtype, batch_order=batch_order
    )
    cache = open_cache(build_cache(cfg, show_progress=False))
    assert cache.memory_mapped
    want = reference(cfg)
    got = cache.read(0, cache.num_examples)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k
    for i in range(cache.num_chunks):  # memory maps agree with zarr's own decode
        lo, hi = cache.chunk_bounds(i)
        for k, v in cache.read_chunk(i).items():
            assert np.array_equal(v, cache.group[k][lo:hi]), (k, i)


def test_values_are_the_teachers_hidden_states(tmp_path, sst2_dir, tiny_bert):
    """Independent check against an eager forward, one example at a time."""
    cfg = make_cfg(sst2_dir, tmp_path / "c", tiny_bert, hsk="1l_5t_0.5h")
    cache = open_cache(build_cache(cfg, show_progress=False))
    (layer,) = cache.layers
    f = cache.layer_fields(layer.teacher)
    data = cache.read(0, cache.num_examples)
    values = decode_values(cache.manifest, data[f["values"]], None)
    eager = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert, attn_implementation="eager", trust_remote_code=False
    )
    eager.eval()
    sep = 3  # [SEP] in the fixture vocab
    for i in range(cache.num_examples):
        n = int(data["lengths"][i])
        ids = torch.from_numpy(data["input_ids"][i : i + 1, :n]).long()
        with torch.no_grad():
            out = eager(input_ids=ids, output_hidden_states=True, output_attentions=True)
        # mean over heads of log-softmax orders tokens like the mean pre-softmax score
        logp = out.attentions[layer.score_attention][0, :, 0, :].log().mean(0)
        logp[ids[0] == sep] = -float("inf")
        k = int(data["n_valid"][i])
        pos = data[f["positions"]][i]
        assert k == min(5, n - 1) and (pos[k:] == -1).all()  # one [SEP] excluded
        assert (
            pos[:k].tolist() == torch.sort(logp, descending=True, stable=True).indices[:k].tolist()
        )
        h = out.hidden_states[layer.teacher][0, pos[:k].astype(np.int64)]  # (k, H)
        dims = decode_dims(data[f["dims"]][i, :k], None)  # 32 wide: one byte plane
        torch.testing.assert_close(
            torch.from_numpy(values[i, :k]),
            torch.gather(h, 1, torch.from_numpy(dims)),
            rtol=2e-3,
            atol=2e-3,
        )
        assert (np.diff(dims, axis=-1) > 0).all()  # ascending dims
        # ... and they are the 16 largest |values| of each token (no kept one is smaller than
        # an unkept one, up to fp16 rounding)
        kept = torch.zeros_like(h, dtype=torch.bool).scatter(1, torch.from_numpy(dims), True)
        mags = h.abs()
        smallest_kept = mags.masked_fill(~kept, float("inf")).amin(1)
        assert (smallest_kept >= mags.masked_fill(kept, 0).amax(1) - 1e-3).all()


KILL_SCRIPT = """
import json, os, signal, sys
import zarr.core.array as za
from hskcache.build import build_cache
from hskcache.config import BuildConfig
calls, kill_at = [0], int(sys.argv[2])
orig = za.Array.__setitem__
def setitem(self, key, value):
    calls[0] += 1
    if calls[0] == kill_at:  # mid-shard: some arrays of this shard written, others not
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(self, key, value)
za.Array.__setitem__ = setitem
build_cache(BuildConfig(**json.loads(sys.argv[1])), show_progress=False)
"""


@pytest.mark.parametrize("batch_order", ["length", "data"])
def test_kill_then_resume_is_byte_identical(tmp_path, sst2_dir, tiny_bert, batch_order):
    straight = make_cfg(sst2_dir, tmp_path / "straight", tiny_bert, batch_order=batch_order)
    build_cache(straight, show_progress=False)
    killed = make_cfg(sst2_dir, tmp_path / "killed", tiny_bert, batch_order=batch_order)
    n_arrays = 9  # 6 common + positions, values, dims
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, json.dumps(killed.__dict__), str(n_arrays * 2 + 4)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9, proc.stderr
    root = Path(killed.out)
    (root / "layers" / "h1" / "values" / "c" / "x.1234.partial").write_bytes(b"torn write")
    with pytest.raises(CacheIncompleteError, match="rerun the same"):
        open_cache(root)
    problems = verify_cache(str(root))
    assert any("never finished" in p for p in problems)
    assert "object 'layers/h1/values/c/3/0/0' is missing" in problems
    build_cache(killed, show_progress=False)
    assert files(root) == files(Path(straight.out))
    assert verify_cache(str(root)) == []


def test_teacher_order_is_longest_first_and_scatters_back():
    lengths = np.array([3, 7, 3, 9, 7, 1], dtype=np.int32)
    order = teacher_order(lengths, "length")
    assert order.tolist() == [3, 1, 4, 0, 2, 5]  # longest first, ties in data order
    assert teacher_order(lengths, "data").tolist() == [0, 1, 2, 3, 4, 5]
    # batches of 2 in length order, each row's "result" its own length times 10
    parts = [{"x": lengths[order[b : b + 2]] * 10} for b in range(0, 6, 2)]
    assert scatter_back(parts, order)["x"].tolist() == (lengths * 10).tolist()
    padded = lambda o: sum(lengths[o[b : b + 2]].max() * 2 for b in range(0, 6, 2))  # noqa: E731
    assert padded(order) < padded(np.arange(6))  # 38 tokens through the teacher, not 44


# Stored float16 values of a length-ordered build against a data-ordered one: the same hidden
# states from other batch shapes, so they differ by float32 rounding, which can move a value
# across a float16 rounding boundary: one float16 step (2**-10 of the value) at most.
FP16_STEP = 2.0**-10


def test_length_order_matches_data_order_to_rounding(tmp_path, sst2_dir, tiny_bert):
    """Length batching changes only the float rounding: positions and dims equal except where
    two candidates tie within rounding, values within one float16 step, logits to 1e-5."""
    kw = dict(hsk="1l_5t_0.5h", chunk_rows=8, batch_size=4)
    by_len = open_cache(build_cache(make_cfg(sst2_dir, tmp_path / "a", tiny_bert, **kw), False))
    by_data = make_cfg(sst2_dir, tmp_path / "b", tiny_bert, batch_order="data", **kw)
    by_data = open_cache(build_cache(by_data, False))
    assert by_len.manifest["build"]["batch_order"] == "length"
    a, b = by_len.read(0, by_len.num_examples), by_data.read(0, by_data.num_examples)
    for k in ("input_ids", "token_type_ids", "lengths", "labels", "n_valid"):
        assert np.array_equal(a[k], b[k]), k  # rows written back in their own order
    np.testing.assert_allclose(a["logits"], b["logits"], rtol=1e-5, atol=1e-5)
    (layer,) = by_len.layers
    pos = by_len.layer_fields(layer.teacher)["positions"]
    pa, pb = a[pos], b[pos]
    scores = _cls_scores(tiny_bert, a["input_ids"], a["lengths"], layer.score_attention)
    for i, j in zip(*np.nonzero(pa != pb), strict=True):  # only near ties may swap places
        assert abs(scores[i][pa[i, j]] - scores[i][pb[i, j]]) < 1e-4, (i, j)
    tok = (pa == pb) & (pa >= 0)  # the same token kept by both
    va, vb = _dense(by_len, a, layer), _dense(by_data, b, layer)  # (N, K, H), NaN: not kept
    both = ~np.isnan(va) & ~np.isnan(vb) & tok[..., None]
    step = FP16_STEP * np.fmax(np.abs(va), np.abs(vb)) + 1e-7
    assert (np.abs(va - vb)[both] <= step[both]).all()
    same_dims = (np.isnan(va) == np.isnan(vb)).all(-1)[tok]
    assert same_dims.mean() > 0.95  # near ties are rare: the comparison has teeth
    # a dim kept by one build only tied (within rounding) with one kept by the other only, so
    # each token's kept magnitudes, largest first, still agree
    mag = lambda v: -np.sort(-np.nan_to_num(np.abs(v[tok])), axis=-1)  # noqa: E731
    ma, mb = mag(va), mag(vb)
    assert (np.abs(ma - mb) <= FP16_STEP * np.maximum(ma, mb) + 1e-7).all()
    with pytest.raises(CacheMismatchError, match="'build.batch_order'"):
        build_cache(make_cfg(sst2_dir, tmp_path / "b", tiny_bert, **kw), show_progress=False)


def _dense(cache, data: dict, layer) -> np.ndarray:
    """(N, K, H) float32: each kept token's stored values at their dims, NaN elsewhere; the
    same for any order the format stores a token's dims in."""
    f = cache.layer_fields(layer.teacher)
    values = decode_values(cache.manifest, data[f["values"]], None)
    dims = decode_dims(data[f["dims"]], data[f["dims_hi"]] if "dims_hi" in f else None)
    out = np.full((*dims.shape[:-1], cache.info.teacher.hidden_size), np.nan, np.float32)
    np.put_along_axis(out, dims.astype(np.int64), values, axis=-1)
    return out


def _cls_scores(teacher: Path, ids: np.ndarray, lengths: np.ndarray, layer: int) -> list:
    """Per row, each token's head-averaged log attention from [CLS] in `layer` (eager, one row
    at a time): the pre-softmax ranking the build uses, up to a per-row constant."""
    eager = AutoModelForSequenceClassification.from_pretrained(
        teacher, attn_implementation="eager", trust_remote_code=False
    ).eval()
    out = []
    for row, n in zip(ids, lengths, strict=True):
        with torch.no_grad():
            att = eager(torch.from_numpy(row[None, :n]).long(), output_attentions=True).attentions
        out.append(att[layer][0, :, 0, :].log().mean(0).numpy())
    return out


def test_flipped_byte_is_named(tmp_path, sst2_dir, tiny_bert):
    root = build_cache(make_cfg(sst2_dir, tmp_path / "c", tiny_bert), show_progress=False)
    shard = root / "layers" / "h1" / "values" / "c" / "1" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[40 + 4 * 4 * 8 * 2] ^= 0x01  # inside the second chunk of shard 1 = chunk 3
    shard.write_bytes(bytes(raw))
    problems = verify_cache(str(root))
    assert len(problems) == 2
    assert "object 'layers/h1/values/c/1/0/0' does not match its recorded sha256" in problems[0]
    assert "'layers/h1/values' chunk 3 is damaged" in problems[1]


def test_swapped_shards_and_edited_counts_are_named(tmp_path, sst2_dir, tiny_bert):
    """Each swapped shard still passes its own crc32c; only the manifest's table catches it."""
    root = build_cache(make_cfg(sst2_dir, tmp_path / "c", tiny_bert), show_progress=False)
    a, b = (root / "logits" / "c" / str(s) / "0" for s in (0, 1))
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    problems = verify_cache(str(root))
    assert [p.split(" does not")[0] for p in problems] == [
        "object 'logits/c/0/0'",
        "object 'logits/c/1/0'",
    ]
    a.write_bytes(a_bytes)
    b.write_bytes(b_bytes)
    assert verify_cache(str(root)) == []
    group = zarr.open_group(root, mode="r+")
    m = group.attrs[MANIFEST_KEY]
    group.attrs[MANIFEST_KEY] = {**m, "counts": {**m["counts"], "num_chunks": 1}}
    assert verify_cache(str(root)) == [
        "counts.num_chunks is 1, but 26 examples in 4-row chunks make 7"
    ]


def test_cache_of_an_older_format_is_refused(tmp_path, sst2_dir, tiny_bert):
    root = build_cache(make_cfg(sst2_dir, tmp_path / "c", tiny_bert), show_progress=False)
    group = zarr.open_group(root, mode="r+")
    group.attrs[MANIFEST_KEY] = {**group.attrs[MANIFEST_KEY], "format_version": 3}
    with pytest.raises(CacheError, match="format version 3 .* reads format 4: rebuild it"):
        open_cache(root)


def test_rebuild_with_other_settings_is_refused(tmp_path, sst2_dir, tiny_bert):
    out = tmp_path / "c"
    build_cache(make_cfg(sst2_dir, out, tiny_bert), show_progress=False)
    before = files(out)
    with pytest.raises(CacheMismatchError, match="'selection.name'.*--overwrite"):
        build_cache(make_cfg(sst2_dir, out, tiny_bert, hsk="1l_3t_0.25h"), show_progress=False)
    with pytest.raises(CacheMismatchError, match="'storage.value_dtype'"):
        build_cache(make_cfg(sst2_dir, out, tiny_bert, value_dtype="int8"), show_progress=False)
    assert files(out) == before  # nothing touched
    build_cache(make_cfg(sst2_dir, out, tiny_bert), show_progress=False)  # same: no-op
    assert files(out) == before
    build_cache(
        make_cfg(sst2_dir, out, tiny_bert, hsk="1l_3t_0.25h", overwrite=True), show_progress=False
    )
    assert open_cache(out).manifest["selection"]["name"] == "1l_3t_0.25h"


def test_full_hsk(tmp_path, sst2_dir, tiny_bert):
    cfg = make_cfg(sst2_dir, tmp_path / "c", tiny_bert, hsk="full", student_layers=2, l_top=2)
    cache = open_cache(build_cache(cfg, show_progress=False))
    m = cache.manifest
    assert [(la["student"], la["teacher"]) for la in m["layers"]] == [(0, 0), (1, 1), (2, 2)]
    assert m["selection"]["tokens_kept"] == 16 and m["selection"]["width_kept"] == 32
    d = cache.read(0, cache.num_examples)
    assert np.array_equal(d["n_valid"], d["lengths"])
    for i, n in enumerate(d["lengths"]):
        assert d["layers/h2/positions"][i].tolist() == list(range(n)) + [-1] * (16 - n)
    assert m["stats"]["hsk_fraction"] == pytest.approx(1.0)
    assert "layers/h2/dims" not in cache.specs


def test_random_width_dims_in_manifest(tmp_path, sst2_dir, tiny_bert):
    cfg = make_cfg(
        sst2_dir, tmp_path / "c", tiny_bert, width_strategy="random", seed=3, length="left"
    )
    cache = open_cache(build_cache(cfg, show_progress=False))
    dims = cache.manifest["width_dims"]
    assert len(dims) == 8 and "layers/h1/dims" not in cache.specs
    full = open_cache(
        build_cache(
            make_cfg(sst2_dir, tmp_path / "f", tiny_bert, hsk="1l_4t_1h", length="left"),
            show_progress=False,
        )
    )
    a = cache.read(0, 10)["layers/h1/values"]
    b = full.read(0, 10)["layers/h1/values"]
    assert np.array_equal(a, b[..., dims])


def test_mpnet_pairs_never_select_separators(tmp_path, mrpc_dir, tiny_mpnet):
    cfg = make_cfg(
        mrpc_dir, tmp_path / "c", tiny_mpnet, max_length=32, hsk="2l_6t_0.5h", student_layers=2
    )
    cache = open_cache(build_cache(cfg, show_progress=False))
    d = cache.read(0, cache.num_examples)
    sep = cache.manifest["tokenizer"]["sep_token_id"]
    assert (d["input_ids"] == sep).sum(axis=1).min() == 3  # <s> A </s></s> B </s>
    for la in cache.layers:
        pos = d[f"layers/h{la.teacher}/positions"].astype(np.int64)
        picked = np.take_along_axis(d["input_ids"], np.maximum(pos, 0), axis=1)
        assert not ((picked == sep) & (pos >= 0)).any()
        assert not (pos == 0).all(axis=1).any()


def test_zstd_cache_reads_through_zarr(tmp_path, sst2_dir, tiny_bert):
    plain = open_cache(
        build_cache(make_cfg(sst2_dir, tmp_path / "a", tiny_bert), show_progress=False)
    )
    packed = open_cache(
        build_cache(
            make_cfg(sst2_dir, tmp_path / "b", tiny_bert, compressor="zstd"), show_progress=False
        )
    )
    assert not packed.memory_mapped and verify_cache(packed.url) == []
    a, b = plain.read(3, 21), packed.read(3, 21)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_two_process_build_to_s3_equals_one_local(tmp_path, sst2_dir, tiny_bert, s3_bucket):
    """`torchrun` ranks write disjoint whole shards straight to object storage (the loopback S3
    server); every object, the root manifest included, equals a one-process local build: the
    manifest records nothing of where or by how many processes it was written."""
    import os

    import s3fs

    args = [
        "build",
        "--data",
        str(sst2_dir),
        "--teacher",
        str(tiny_bert),
        "--max-length",
        "16",
        "--hsk",
        "1l_4t_0.25h",
        "--chunk-rows",
        "4",
        "--chunks-per-shard",
        "1",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # same float reductions in both runs
    torchrun = Path(sys.executable).parent / "torchrun"
    two = subprocess.run(
        [
            str(torchrun),
            "--standalone",  # a free rendezvous port: no clash with other runs
            "--nproc-per-node",
            "2",
            "-m",
            "hskcache.cli",
            *args,
            "--out",
            f"{s3_bucket}/two",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert two.returncode == 0, two.stderr[:3000]
    one = subprocess.run(
        [sys.executable, "-m", "hskcache.cli", *args, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    fs, base = s3fs.S3FileSystem(skip_instance_cache=True), f"{s3_bucket[5:]}/two"
    two_files = {k[len(base) + 1 :]: fs.cat_file(k) for k in fs.find(base)}
    assert two_files == files(tmp_path / "one")  # the lock is gone, too
    assert json.loads(two_files["zarr.json"])["attributes"][MANIFEST_KEY]["status"] == "complete"


def test_full_disk_is_one_line_and_resumable(tmp_path, sst2_dir, tiny_bert, monkeypatch):
    import errno

    import zarr.core.array as za

    from hskcache.errors import HskError

    straight = build_cache(make_cfg(sst2_dir, tmp_path / "a", tiny_bert), show_progress=False)
    orig, calls = za.Array.__setitem__, [0]

    def full_after_a_while(self, key, value):
        calls[0] += 1
        if calls[0] > 12:
            raise OSError(errno.ENOSPC, "No space left on device")
        return orig(self, key, value)

    monkeypatch.setattr(za.Array, "__setitem__", full_after_a_while)
    cfg = make_cfg(sst2_dir, tmp_path / "b", tiny_bert)
    with pytest.raises(HskError, match="disk full; finished shards are kept"):
        build_cache(cfg, show_progress=False)
    with pytest.raises(CacheIncompleteError):
        open_cache(cfg.out)
    monkeypatch.setattr(za.Array, "__setitem__", orig)
    build_cache(cfg, show_progress=False)  # space freed: the same command finishes the job
    assert files(Path(cfg.out)) == files(straight)


def test_overwrite_never_deletes_a_non_cache(tmp_path, sst2_dir, tiny_bert):
    from hskcache.errors import CacheError

    precious = tmp_path / "project"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(CacheError, match="not an hskcache cache"):
        build_cache(make_cfg(sst2_dir, precious, tiny_bert, overwrite=True), show_progress=False)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_autocast_build_records_amp_and_stays_close(tmp_path, sst2_dir, tiny_bert):
    """`--amp bf16` runs the teacher under autocast (CPU here): values move by bf16 rounding
    only, the manifest records it, and resuming with another --amp is refused."""
    plain = open_cache(build_cache(make_cfg(sst2_dir, tmp_path / "a", tiny_bert), False))
    amp = open_cache(build_cache(make_cfg(sst2_dir, tmp_path / "b", tiny_bert, amp="bf16"), False))
    assert amp.manifest["build"]["amp"] == "bf16" and plain.manifest["build"]["amp"] == "none"
    a, b = plain.read(0, 26), amp.read(0, 26)
    assert (a["layers/h1/positions"] != b["layers/h1/positions"]).mean() < 0.25
    same = a["layers/h1/positions"] == b["layers/h1/positions"]
    va = a["layers/h1/values"].astype(np.float32)
    vb = b["layers/h1/values"].astype(np.float32)
    rows = same.all(axis=1)
    assert rows.any()
    np.testing.assert_allclose(va[rows], vb[rows], atol=0.1, rtol=0.05)
    assert not np.array_equal(va, vb)  # autocast really ran in bf16
    with pytest.raises(CacheMismatchError, match="'build.amp'"):
        build_cache(make_cfg(sst2_dir, tmp_path / "b", tiny_bert), show_progress=False)
    with pytest.raises(HskError, match="--amp fp16 needs --device cuda"):
        build_cache(make_cfg(sst2_dir, tmp_path / "c", tiny_bert, amp="fp16"), False)
