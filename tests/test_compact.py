"""The compact cache format: uint16 token ids, zstd small integer arrays, magnitude dims as
ascending gap bytes ranked by |value| as stored. Every value dtype and width strategy must come
back exactly as the selection made it, through the reader's direct (memory-map + zstd) path.

Derive cuts of this format (narrower magnitude widths re-ranked from stored values, int8 from
float16, the int8 width refusal) are checked against direct builds in tests/test_derive.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from conftest import make_bert
from hskcache.build import build_cache
from hskcache.codec import decode_dims, decode_values, encode_dims, encode_values, ids_dtype
from hskcache.config import BuildConfig
from hskcache.data import load_split
from hskcache.errors import CacheError
from hskcache.layout import layer_key, shard_key
from hskcache.reader import open_cache
from hskcache.selection import scatter_width, select_width_magnitude
from hskcache.targets import plan_selection, teacher_targets
from hskcache.teacher import ClsScoreProbe, load_teacher
from hskcache.tokenize import tokenize
from hskcache.verify import verify_cache
from hsktrain.batch import from_cache

# What a training batch carries of each stored value dtype: 16-bit ones as stored.
CARRIED = {"float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.float32}
SHARD = 8  # rows per shard (4-row chunks, 2 per shard); one teacher batch per shard


def make_cfg(data: Path, out: Path, teacher: Path, **kw) -> BuildConfig:
    base = dict(
        data=str(data),
        split="dev",
        out=str(out),
        teacher=str(teacher),
        student_layers=2,
        max_length=16,
        chunk_rows=4,
        chunks_per_shard=2,
        batch_size=SHARD,  # each shard in one batch, in data order: the online batches below
        batch_order="data",
    )
    return BuildConfig(**{**base, **kw})


def online_layers(cfg: BuildConfig, lo: int, hi: int):
    """Rows [lo, hi) through the teacher and the selection, as an online fit computes them."""
    ex = load_split(cfg.data, cfg.task, cfg.split)
    teacher = load_teacher(cfg.teacher, 2)
    t = teacher.config
    plan = plan_selection(
        cfg.selection, t.num_hidden_layers, t.hidden_size, cfg.max_length, cfg.value_dtype
    )
    enc = tokenize(teacher.tokenizer, ex, cfg.max_length)
    T = int(enc.lengths[lo:hi].max())
    ids = torch.from_numpy(enc.input_ids[lo:hi, :T]).long()
    mask = (torch.arange(T)[None, :] < torch.from_numpy(enc.lengths[lo:hi])[:, None]).long()
    tt = torch.from_numpy(enc.token_type_ids[lo:hi, :T]).long()
    probe = ClsScoreProbe(teacher.model, {la["score_attention"] for la in plan.layers} - {None})
    try:
        return teacher_targets(teacher, probe, plan, ids, mask, tt).layers, t.hidden_size
    finally:
        probe.close()


def dense(values: torch.Tensor, dims: torch.Tensor | None, hidden: int) -> torch.Tensor:
    return values if dims is None else scatter_width(values, dims, hidden)


WIDTHS = {  # width strategy: (hsk, --width-strategy)
    "magnitude": ("2l_4t_0.25h", "magnitude"),
    "uniform": ("2l_4t_0.25h", "uniform"),
    "random": ("2l_4t_0.25h", "random"),
    "full": ("2l_4t_1h", "magnitude"),
}


@pytest.mark.parametrize("value_dtype", ["float16", "bfloat16", "int8"])
@pytest.mark.parametrize("width", list(WIDTHS))
def test_round_trip_equals_the_selection(tmp_path, sst2_dir, tiny_bert, value_dtype, width):
    hsk, strategy = WIDTHS[width]
    cfg = make_cfg(
        sst2_dir,
        tmp_path / "c",
        tiny_bert,
        hsk=hsk,
        width_strategy=strategy,
        value_dtype=value_dtype,
    )
    cache = open_cache(build_cache(cfg, show_progress=False))
    assert cache.memory_mapped and cache.info.storage.ids_dtype == "uint16"
    top = layer_key(cache.layers[-1].teacher)
    assert (f"{top}/dims" in cache.specs) == (width == "magnitude")
    assert f"{top}/dims_hi" not in cache.specs  # 32 wide: every gap fits a byte
    for i in range(cache.num_chunks):  # the direct reads (maps, zstd) agree with zarr's
        lo, hi = cache.chunk_bounds(i)
        for k, v in cache.read_chunk(i).items():
            assert v.dtype == cache.group[k].dtype and np.array_equal(v, cache.group[k][lo:hi])
    for lo in range(0, cache.num_examples, SHARD):
        hi = min(cache.num_examples, lo + SHARD)
        offline = from_cache(cache.read(lo, hi), cache.manifest, "cpu").layers
        online, h = online_layers(cfg, lo, hi)
        for off, on in zip(offline, online, strict=True):
            assert torch.equal(off.positions, on.positions)
            assert off.values.dtype == CARRIED[value_dtype]  # widened by the loss, on device
            stored = encode_values(on.values, value_dtype)  # what the cache keeps of them
            values = decode_values(cache.manifest, stored["values"], stored.get("scales"))
            want = dense(torch.from_numpy(values), on.dims, h)
            assert torch.equal(dense(off.values, off.dims, h), want)
            if width == "magnitude":
                assert (off.dims.diff(dim=-1) > 0).all()  # ascending, as stored


def test_wide_teacher_dims_take_two_byte_planes(tmp_path, sst2_dir):
    """A teacher wider than 256: gaps can pass a byte, so `dims_hi` holds their high bytes."""
    teacher = make_bert(tmp_path / "wide", hidden=320)
    cfg = make_cfg(sst2_dir, tmp_path / "c", teacher, hsk="1l_4t_0.05h")
    cache = open_cache(build_cache(cfg, show_progress=False))
    top = layer_key(cache.layers[-1].teacher)
    assert {f"{top}/dims", f"{top}/dims_hi"} <= set(cache.specs)
    offline = from_cache(cache.read(0, SHARD), cache.manifest, "cpu").layers[0]
    (online,), h = online_layers(cfg, 0, SHARD)
    assert torch.equal(offline.dims, online.dims)
    want = torch.from_numpy(online.values.half().float().numpy())
    assert torch.equal(dense(offline.values, offline.dims, h), dense(want, online.dims, h))
    assert verify_cache(cache.url) == []


def test_dims_gaps_past_one_byte_round_trip():
    dims = np.array([[0, 1, 300, 1023], [5, 260, 261, 700], [0, 256, 512, 768]])
    stored = encode_dims(dims, 1024)
    assert sorted(stored) == ["dims", "dims_hi"]
    assert stored["dims_hi"].any()  # gaps of 299, 723, 255 + 1...
    assert np.array_equal(decode_dims(stored["dims"], stored["dims_hi"]), dims)
    narrow = encode_dims(np.array([[0, 255], [3, 4]]), 256)  # h <= 256: one plane suffices
    assert sorted(narrow) == ["dims"]
    assert np.array_equal(decode_dims(narrow["dims"], None), [[0, 255], [3, 4]])


def test_magnitude_ranks_values_as_stored_ties_to_the_lower_dim():
    # 1.0001 and -1.00001 both round to 1.0 in float16 and bfloat16: three ties, and the two
    # lower dims win, although float32 would rank dims 1 and 3 first
    x = torch.tensor([[1.0, 1.0001, 0.5, -1.00001]])
    for kind in ("float16", "bfloat16", "int8"):
        values, dims = select_width_magnitude(x, 2, kind)
        assert dims.tolist() == [[0, 1]] and torch.equal(values, x[:, :2])
    values, dims = select_width_magnitude(torch.tensor([0.1, 3.0, -2.0]), 2)
    assert dims.tolist() == [1, 2] and values.tolist() == [3.0, -2.0]  # ascending dims


def test_ids_dtype_follows_the_vocabulary(tmp_path, sst2_dir):
    assert [ids_dtype(n) for n in (30_522, 65_536, 65_537)] == ["uint16", "uint16", "int32"]
    teacher = big_vocab_bert(tmp_path / "big")
    cfg = make_cfg(sst2_dir, tmp_path / "c", teacher, hsk="1l_4t_0.25h")
    cache = open_cache(build_cache(cfg, show_progress=False))
    ids = cache.read(0, cache.num_examples)["input_ids"]
    assert cache.info.storage.ids_dtype == "int32" and ids.dtype == np.int32
    assert ids.max() > 2**16  # real words sit past uint16's range
    want = tokenize(load_teacher(str(teacher), 2).tokenizer, load_split(cfg.data, None, "dev"), 16)
    assert np.array_equal(ids, want.input_ids)


def big_vocab_bert(root: Path) -> Path:
    """make_bert's tiny BERT with 70,000 filler entries ahead of its vocabulary."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    small = make_bert(root / "small")
    words = [f"filler{i}" for i in range(70_000)] + (small / "vocab.txt").read_text().split()
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})
    cfg = BertConfig.from_pretrained(small)
    cfg.vocab_size = len(words)
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(root)
    tok.save_pretrained(root)
    return root


def test_verify_and_reader_catch_a_corrupted_compressed_chunk(tmp_path, sst2_dir, tiny_bert):
    cfg = make_cfg(sst2_dir, tmp_path / "c", tiny_bert, hsk="1l_4t_0.25h")
    cache = open_cache(build_cache(cfg, show_progress=False))
    name = f"{layer_key(cache.layers[-1].teacher)}/dims"
    spec = cache.specs[name]
    assert spec.compressed
    path = Path(cache.url) / shard_key(spec, 0)
    data = bytearray(path.read_bytes())
    data[5] ^= 0xFF  # inside chunk 0's zstd frame (the shard's first chunk)
    path.write_bytes(bytes(data))
    problems = verify_cache(cache.url)
    assert f"array '{name}' chunk 0 is damaged" in "\n".join(problems)
    with pytest.raises(CacheError, match="chunk 0 fails its checksum"):
        open_cache(cache.url).read_chunk(0)


def test_dims_past_the_width_are_named_by_reader_and_verify(tmp_path, sst2_dir, tiny_bert):
    """Gap bytes rewritten through zarr (checksums valid) so a row's dims pass dim 31."""
    cfg = make_cfg(sst2_dir, tmp_path / "c", tiny_bert, hsk="1l_4t_0.25h")
    cache = open_cache(build_cache(cfg, show_progress=False))
    name = f"{layer_key(cache.layers[-1].teacher)}/dims"
    a = zarr.open_array(Path(cache.url) / name, mode="r+")
    rows = a[:]
    rows[5] = 9  # dims 9, 18, ..., 72 of a 32-wide teacher; row 5 sits in chunk 1
    a[:] = rows
    with pytest.raises(CacheError) as e:
        open_cache(cache.url).read_chunk(1)
    assert str(e.value) == (
        f"{cache.url}: array '{name}' chunk 1: dims not ascending inside 0..31 (damaged); run "
        f"`hskcache verify {cache.url}`"
    )
    assert any(name in p for p in verify_cache(cache.url))  # its sha256 no longer matches
