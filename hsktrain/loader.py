"""Batches from a cache (or in-memory rows) at full speed, deterministically and resumably.

Per-example random reads are slow, so shuffling is two-level (as in mosaicml-streaming): each
epoch permutes the order of chunks (seeded by seed and epoch), reads `buffer_chunks` chunks at a
time, permutes the rows inside that buffer, and cuts batches from the resulting stream. Memory
holds one buffer whatever the cache size. The stream is a pure function of (seed, epoch, rank,
world), so resuming at batch b of an epoch recomputes where that batch starts without reading
what came before. Under DDP each rank takes every world-th chunk of the epoch's order: disjoint.
Reads happen in the calling process (memory-mapped for local caches): no forked workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class RowSource(Protocol):
    """What the loader reads: `hskcache.reader.Cache` or `ArraySource`."""

    num_examples: int
    chunk_rows: int
    num_chunks: int

    def chunk_bounds(self, i: int) -> tuple[int, int]: ...

    def read_chunk(self, i: int, fields: list[str] | None = None) -> dict[str, np.ndarray]: ...


@dataclass
class ArraySource:
    """Rows held in memory (tokenized raw data for fine-tuning, online KD and eval)."""

    arrays: dict[str, np.ndarray]
    chunk_rows: int

    @property
    def num_examples(self) -> int:
        return len(next(iter(self.arrays.values())))

    @property
    def num_chunks(self) -> int:
        return -(-self.num_examples // self.chunk_rows)

    def chunk_bounds(self, i: int) -> tuple[int, int]:
        lo = i * self.chunk_rows
        return lo, min(self.num_examples, lo + self.chunk_rows)

    def read_chunk(self, i: int, fields: list[str] | None = None) -> dict[str, np.ndarray]:
        lo, hi = self.chunk_bounds(i)
        return {k: v[lo:hi] for k, v in self.arrays.items() if fields is None or k in fields}


def chunk_order(
    num_chunks: int, seed: int, epoch: int, rank: int = 0, world: int = 1, shuffle: bool = True
) -> np.ndarray:
    """This rank's chunks for an epoch, in reading order."""
    order = np.arange(num_chunks)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(num_chunks)
    return order[rank::world]


def buffer_permutation(n: int, seed: int, epoch: int, group: int, shuffle: bool = True):
    """Row order inside buffer `group` of an epoch."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([seed, epoch, group, 1]).permutation(n)


@dataclass
class ChunkShuffleLoader:
    source: RowSource
    batch_size: int
    seed: int = 0
    buffer_chunks: int = 4
    shuffle: bool = True
    drop_last: bool = False
    rank: int = 0
    world: int = 1
    fields: list[str] | None = None

    def _groups(self, epoch: int) -> list[np.ndarray]:
        order = chunk_order(
            self.source.num_chunks, self.seed, epoch, self.rank, self.world, self.shuffle
        )
        return [order[i : i + self.buffer_chunks] for i in range(0, len(order), self.buffer_chunks)]

    def _rows(self, chunks: np.ndarray) -> int:
        return sum(hi - lo for lo, hi in map(self.source.chunk_bounds, chunks))

    def rows_per_epoch(self, epoch: int = 0) -> int:
        return sum(self._rows(g) for g in self._groups(epoch))

    def batches_per_epoch(self, epoch: int = 0) -> int:
        n = self.rows_per_epoch(epoch)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def iterate(self, epoch: int, start_batch: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Yield the epoch's batches from number `start_batch` on (0 = the whole epoch)."""
        skip = start_batch * self.batch_size  # rows of the stream already consumed
        pending: list[dict[str, np.ndarray]] = []
        have = 0
        for g, chunks in enumerate(self._groups(epoch)):
            n = self._rows(chunks)
            if skip >= n:  # resume: this buffer was consumed before; no read needed
                skip -= n
                continue
            parts = [self.source.read_chunk(int(c), self.fields) for c in chunks]
            rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            perm = buffer_permutation(n, self.seed, epoch, g, self.shuffle)[skip:]
            skip = 0
            pending.append({k: v[perm] for k, v in rows.items()})
            have += len(perm)
            while have >= self.batch_size:
                batch, pending, have = _take(pending, self.batch_size)
                yield batch
        if have and not self.drop_last:
            yield _take(pending, have)[0]


def _take(pending: list[dict], n: int) -> tuple[dict, list[dict], int]:
    """Cut the first n rows off a list of row blocks."""
    merged = {k: np.concatenate([p[k] for p in pending]) for k in pending[0]}
    batch = {k: v[:n] for k, v in merged.items()}
    rest = {k: v[n:] for k, v in merged.items()}
    left = len(next(iter(rest.values())))
    return batch, ([rest] if left else []), left
