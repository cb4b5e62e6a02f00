"""The reader: every example once per epoch, determinism, resume mid-epoch, bounded memory."""

import numpy as np
import pytest

from hskcache.errors import ConfigError
from hsktrain.loader import ArraySource, ChunkShuffleLoader, chunk_order, prefetched


class CountingSource(ArraySource):
    """Counts chunk reads and the most rows held by one read (to bound memory)."""

    reads = 0

    def read_chunk(self, i, fields=None, copy=True):
        type(self).reads += 1
        return super().read_chunk(i, fields, copy)


def source(n=103, chunk_rows=8):
    return CountingSource({"id": np.arange(n), "x": np.arange(n) * 2.0}, chunk_rows)


def ids(loader, epoch, start=0):
    return [b["id"].tolist() for b in loader.iterate(epoch, start)]


@pytest.mark.parametrize("buffer_chunks", [1, 3, 20])
def test_every_example_once_per_epoch(buffer_chunks):
    loader = ChunkShuffleLoader(source(), batch_size=10, seed=1, buffer_chunks=buffer_chunks)
    batches = ids(loader, 0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(103)) and flat != list(range(103))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert loader.batches_per_epoch() == 11
    for b in loader.iterate(0):
        assert (b["x"] == b["id"] * 2.0).all()  # fields stay aligned through shuffles


def test_deterministic_per_seed_and_epoch():
    a = ChunkShuffleLoader(source(), batch_size=10, seed=1)
    b = ChunkShuffleLoader(source(), batch_size=10, seed=1)
    assert ids(a, 0) == ids(b, 0)
    assert ids(a, 0) != ids(a, 1)
    assert ids(a, 0) != ids(ChunkShuffleLoader(source(), batch_size=10, seed=2), 0)


@pytest.mark.parametrize("start", [1, 3, 4, 7, 10])
def test_resume_mid_epoch_equals_straight(start):
    loader = ChunkShuffleLoader(source(), batch_size=10, seed=5, buffer_chunks=3)
    assert ids(loader, 2, start) == ids(loader, 2)[start:]


def test_resume_skips_consumed_buffers_without_reading():
    loader = ChunkShuffleLoader(source(), batch_size=8, seed=0, buffer_chunks=2)
    CountingSource.reads = 0
    list(loader.iterate(0, start_batch=10))  # first 80 rows = 5 whole buffers of 16 rows
    assert CountingSource.reads == 13 - 10  # 13 chunks, 10 skipped unread


def test_ranks_get_disjoint_chunks():
    loaders = [ChunkShuffleLoader(source(), 10, seed=3, rank=r, world=3) for r in range(3)]
    seen = [set(i for b in ids(ld, 0) for i in b) for ld in loaders]
    assert set.union(*seen) == set(range(103)) and sum(map(len, seen)) == 103
    assert sorted(np.concatenate([chunk_order(13, 3, 0, r, 3) for r in range(3)])) == list(
        range(13)
    )


def test_memory_is_one_buffer():
    """The largest block alive is a buffer, not the epoch."""
    loader = ChunkShuffleLoader(source(n=10_000, chunk_rows=50), batch_size=32, buffer_chunks=4)
    it = loader.iterate(0)
    next(it)
    frame = it.gi_frame.f_locals
    assert len(frame["rows"]["id"]) == 200 and len(frame["pending"]) <= 2  # one may be ending
    assert all(len(block.rows["id"]) == 200 for block in frame["pending"])


def stream_by_whole_buffers(loader, epoch, start=0):
    """The epoch's batches as the loader cut them before it gathered batch by batch: each
    buffer's chunks joined and permuted whole, the stream of those cut into batches. The
    reference the batch-by-batch gather must match exactly."""
    from hsktrain.loader import buffer_permutation, grouped_permutation

    blocks, at = [], 0
    for g, chunks in enumerate(loader._groups(epoch)):
        parts = [loader.source.read_chunk(int(c)) for c in chunks]
        rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        n = len(rows["id"])
        if loader.group_by_length:
            head = -at % loader.batch_size
            perm = grouped_permutation(
                rows["lengths"], loader.batch_size, head, loader.seed, epoch, g
            )
        else:
            perm = buffer_permutation(n, loader.seed, epoch, g, loader.shuffle)
        blocks.append({k: v[perm] for k, v in rows.items()})
        at += n
    stream = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    size, total = loader.batch_size, len(stream["id"])
    cuts = range(0, total - size + 1 if loader.drop_last else total, size)
    return [{k: v[i : i + size] for k, v in stream.items()} for i in cuts][start:]


@pytest.mark.parametrize("grouped", [False, True])
@pytest.mark.parametrize("rank,world", [(0, 1), (1, 2)])
@pytest.mark.parametrize("batch,buffer_chunks", [(10, 3), (7, 1), (32, 4), (5, 20)])
def test_batches_are_the_whole_buffer_streams(grouped, rank, world, batch, buffer_chunks):
    """Every batch, every array, bit for bit: for each seed, epoch, start, rank and grouping."""
    rng = np.random.default_rng(0)
    arrays = {
        "id": np.arange(103),
        "lengths": rng.integers(1, 60, 103),
        "values": rng.standard_normal((103, 3, 4)).astype(np.float16),
    }
    compared = 0
    for seed in (0, 7):
        loader = ChunkShuffleLoader(
            ArraySource(arrays, 8),
            batch,
            seed,
            buffer_chunks,
            rank=rank,
            world=world,
            group_by_length=grouped,
            drop_last=seed == 7,
        )
        for epoch, start in ((0, 0), (1, 0), (2, 3)):
            got = list(loader.iterate(epoch, start))
            want = stream_by_whole_buffers(loader, epoch, start)
            assert len(got) == len(want)
            compared += len(got)
            for a, b in zip(got, want, strict=True):
                assert a.keys() == b.keys()
                for k in a:
                    assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    assert compared >= 6


def test_ddp_steps_are_the_fewest_any_rank_has():
    """103 rows in 13 chunks over 2 ranks (7 and 6 chunks): at 5 rows a batch rank 0 has 11
    or 12 batches by epoch, rank 1 has 10, and every rank must run the same count."""
    from hsktrain.train import steps_per_epoch

    loader = ChunkShuffleLoader(source(), 5, seed=3, rank=1, world=2)
    for epoch in range(4):
        per_rank = [
            ChunkShuffleLoader(source(), 5, seed=3, rank=r, world=2).batches_per_epoch(epoch)
            for r in range(2)
        ]
        assert steps_per_epoch(loader, epoch) == min(per_rank)
    with pytest.raises(ConfigError, match="13 chunks cannot feed 14 processes every epoch"):
        steps_per_epoch(ChunkShuffleLoader(source(), 5, rank=0, world=14), 0)


def test_prefetched_keeps_the_order_and_every_item():
    assert list(prefetched(iter(range(50)), depth=3)) == list(range(50))
    assert list(prefetched(iter([]))) == []


def test_prefetched_raises_where_the_producer_failed():
    def items():
        yield from range(3)
        raise ValueError("chunk 3: damaged")

    got = []
    with pytest.raises(ValueError, match="chunk 3: damaged"):
        for x in prefetched(items()):
            got.append(x)
    assert got == [0, 1, 2]


def test_prefetched_stops_reading_when_the_loop_leaves():
    import threading
    import time

    read = []

    def items():
        for i in range(1000):
            read.append(i)
            yield i

    gen = prefetched(items(), depth=2)
    assert [next(gen) for _ in range(5)] == [0, 1, 2, 3, 4]
    gen.close()  # as a loop's `return` does
    time.sleep(0.3)
    assert len(read) <= 5 + 2 + 1  # at most the queue and one item in hand ahead
    assert not any(t.name == "hsk-prefetch" for t in threading.enumerate())
