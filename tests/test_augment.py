"""`hskcache build --augment N`: seeded word-replacement variants, labelled by the teacher.

Variants follow the source rows (variant j of row i at n + i * N + j), unlabelled; they are a
pure function of the seed, so a rebuild and a resumed build store the same bytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_build import KILL_SCRIPT, files
from transformers import AutoTokenizer

from conftest import SENTENCES, write_sst2
from hskcache.augment import Augment, augment_rows, neighbour_table, word_tokens
from hskcache.build import build_cache
from hskcache.config import BuildConfig, DeriveConfig
from hskcache.derive import derive_cache
from hskcache.errors import ConfigError
from hskcache.reader import open_cache
from hskcache.tokenize import tokenize

N = len(SENTENCES)
BASE = dict(max_length=16, chunk_rows=8, chunks_per_shard=2, batch_size=4, student_layers=2)


def cfg(data, out, teacher, **kw) -> BuildConfig:
    return BuildConfig(data=str(data), out=str(out), teacher=str(teacher), **{**BASE, **kw})


def ids_of(cache) -> np.ndarray:
    return cache.read(0, cache.num_examples, ["input_ids"])["input_ids"].astype(np.int64)


def test_variants_are_seeded_and_bounded(tiny_bert, sst2_dir):
    from hskcache.data import load_split

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    enc = tokenize(tok, load_split(str(sst2_dir), None, "train"), 16)
    emb = torch.randn(len(tok), 8, generator=torch.Generator().manual_seed(0))
    a = augment_rows(enc, emb, tok, Augment(3, seed=0))
    assert a.input_ids.shape == (3 * N, 16)
    assert np.array_equal(a.input_ids, augment_rows(enc, emb, tok, Augment(3, seed=0)).input_ids)
    assert not np.array_equal(a.input_ids, augment_rows(enc, emb, tok, Augment(3, 1)).input_ids)
    assert np.array_equal(a.lengths, np.repeat(enc.lengths, 3))
    _, words = word_tokens(tok)
    table = neighbour_table(emb, words, np.flatnonzero(words), 15)
    special = set(tok.all_special_ids)
    changed = 0
    for i in range(N):
        src = enc.input_ids[i]
        replaceable = np.isin(np.arange(16), np.flatnonzero(words[src[: enc.lengths[i]]]))
        for j in range(3):
            var = a.input_ids[i * 3 + j]
            diff = np.flatnonzero(var != src)
            # only whole words change (never a special token or padding), each into a neighbour
            assert replaceable[diff].all() and not special & set(src[diff].tolist())
            assert all(var[p] in table[int(src[p])] for p in diff)
            changed += len(diff)
    total = int(sum(words[enc.input_ids[i, : enc.lengths[i]]].sum() for i in range(N))) * 3
    assert 0.25 * total < changed < 0.55 * total  # about p = 0.4 of the replaceable words


def test_augmented_build_records_and_identity(tmp_path, tiny_bert, sst2_dir):
    plain = open_cache(str(build_cache(cfg(sst2_dir, tmp_path / "p", tiny_bert), False)))
    two = open_cache(str(build_cache(cfg(sst2_dir, tmp_path / "a2", tiny_bert, augment=2), False)))
    assert two.num_examples == 3 * N and two.info.counts.num_unlabelled == 2 * N
    assert dict(two.info.data.augment) == {
        "n": 2,
        "seed": 0,
        "rule": "embedding-neighbours",
        "neighbours": 15,
        "probability": 0.4,
    }
    ids = ids_of(two)
    assert np.array_equal(ids[:N], ids_of(plain))  # source rows first, unchanged
    labels = two.read(0, 3 * N, ["labels"])["labels"]
    assert labels[:N].tolist() == [y for _, y in SENTENCES] and (labels[N:] == -1).all()
    again = open_cache(
        str(build_cache(cfg(sst2_dir, tmp_path / "again", tiny_bert, augment=2), False))
    )
    assert again.info.identity == two.info.identity and np.array_equal(ids_of(again), ids)
    identities = {plain.info.identity, two.info.identity}
    for name, kw in {"n": dict(augment=3), "seed": dict(augment=2, seed=1)}.items():
        other = open_cache(str(build_cache(cfg(sst2_dir, tmp_path / name, tiny_bert, **kw), False)))
        assert other.info.identity not in identities, name
        identities.add(other.info.identity)
    seeded = open_cache(str(tmp_path / "seed"))
    assert not np.array_equal(ids_of(seeded)[N:], ids[N:])  # another seed, other variants
    with pytest.raises(ConfigError, match="augment must be >= 0"):
        build_cache(cfg(sst2_dir, tmp_path / "x", tiny_bert, augment=-1), False)


def test_augmented_build_resumes_byte_identical_and_derives_exactly(tmp_path, tiny_bert):
    data = write_sst2(tmp_path / "SST-2")
    straight = cfg(data, tmp_path / "straight", tiny_bert, augment=2, hsk="1l_4t_0.5h")
    build_cache(straight, show_progress=False)
    killed = cfg(data, tmp_path / "killed", tiny_bert, augment=2, hsk="1l_4t_0.5h")
    proc = subprocess.run(  # killed in the third shard of 78 rows (16-row shards)
        [sys.executable, "-c", KILL_SCRIPT, json.dumps(killed.__dict__), str(9 * 2 + 4)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9, proc.stderr
    build_cache(killed, show_progress=False)
    assert files(Path(killed.out)) == files(Path(straight.out))
    # derive keeps the variants and their record: equal to a direct augmented build
    direct = cfg(data, tmp_path / "direct", tiny_bert, augment=2, hsk="1l_2t_0.5h")
    build_cache(direct, show_progress=False)
    cut = DeriveConfig(
        src=straight.out,
        out=str(tmp_path / "cut"),
        hsk="1l_2t_0.5h",
        chunk_rows=8,
        chunks_per_shard=2,
    )
    derive_cache(cut, show_progress=False)
    got, want = files(tmp_path / "cut"), files(tmp_path / "direct")
    assert got.keys() == want.keys()
    assert all(got[k] == want[k] for k in want if k != "zarr.json")
    d = open_cache(str(tmp_path / "cut")).info
    assert d.identity == open_cache(str(tmp_path / "direct")).info.identity
