"""Batches from a cache (or in-memory rows) at full speed, deterministically and resumably.

Per-example random reads are slow, so shuffling is two-level (as in mosaicml-streaming): each
epoch permutes the order of chunks (seeded by seed and epoch), reads `buffer_chunks` chunks at a
time, permutes the rows inside that buffer, and cuts batches from the resulting stream. Memory
holds one buffer whatever the cache size. The stream is a pure function of (seed, epoch, rank,
world), so resuming at batch b of an epoch recomputes where that batch starts without reading
what came before. Under DDP each rank takes every world-th chunk of the epoch's order: disjoint.
Reads happen in the calling process (memory-mapped for local caches): no forked workers.

`group_by_length` (transformers' LengthGroupedSampler idea, applied inside each buffer) orders a
buffer's rows so that a batch holds rows of similar length, and dynamic padding trims less. The
row stream keeps its shape (the same rows per buffer, the same batch count), so resume, DDP and
every-example-once work unchanged; only the order inside a buffer differs.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# `fit`'s stage s reads epoch e with the shuffle of epoch s * STAGE_STRIDE + e: each stage its own
# orders, a pure function of (seed, stage, epoch) as resume needs.
STAGE_STRIDE = 1000


class RowSource(Protocol):
    """What the loader reads: `hskcache.reader.Cache` or `ArraySource`."""

    num_examples: int
    chunk_rows: int
    num_chunks: int

    def chunk_bounds(self, i: int) -> tuple[int, int]: ...

    def read_chunk(
        self, i: int, fields: list[str] | None = None, copy: bool = True
    ) -> dict[str, np.ndarray]: ...


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

    def read_chunk(
        self, i: int, fields: list[str] | None = None, copy: bool = True
    ) -> dict[str, np.ndarray]:
        """Rows of chunk i, views of the arrays held (in memory already: `copy` changes nothing)."""
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


# Batches sorted by length together (transformers' mega-batch). A buffer is already a random
# draw of chunks, so a smaller one is sorted whole: cutting it finer (transformers keeps 4
# mega-batches however small the data) left 41% of token slots padding instead of 13% on
# tests/test_group_by_length.py's lengths, where shuffled batches pad 68%.
MEGA_BATCHES = 50


def grouped_permutation(
    lengths: np.ndarray, batch_size: int, head: int, seed: int, epoch: int, group: int
) -> np.ndarray:
    """Row order inside buffer `group` of an epoch, rows of similar length batched together.

    The buffer's stream is cut at multiples of `batch_size` counted from the epoch's start, so
    its first `head` rows complete the batch the previous buffer left open and its last rows
    open one the next buffer completes. Those two batches straddle buffers; both get the
    buffer's shortest rows, so a straddling batch holds the short rows of two buffers. The other
    rows, in a seeded random order, are cut into mega-batches of up to `MEGA_BATCHES` batches,
    each sorted by length (longest first), cut into batches, and the batches shuffled: no
    length curriculum within an epoch. A pure function of its arguments (resume relies on it).

    Args:
        lengths: (n,) real tokens of each row of the buffer.
        batch_size: rows per batch.
        head: rows still missing from the batch open before this buffer (0 = none).

    Returns:
        (n,) a permutation of range(n).
    """
    n = len(lengths)
    perm = buffer_permutation(n, seed, epoch, group)
    head = min(head, n)
    full = (n - head) // batch_size * batch_size
    shortest = perm[np.argsort(lengths[perm], kind="stable")]  # ties stay in random order
    edge = shortest[: n - full]  # the head's rows, then the tail's
    inner = np.ones(n, dtype=bool)
    inner[edge] = False
    rest = perm[inner[perm]]  # (full,) random order
    mega = MEGA_BATCHES * batch_size
    parts = [rest[i : i + mega] for i in range(0, full, mega)]
    rest = np.concatenate([p[np.argsort(-lengths[p], kind="stable")] for p in parts] or [rest])
    batches = rest.reshape(-1, batch_size)  # (full / batch_size, batch_size)
    order = np.random.default_rng([seed, epoch, group, 2]).permutation(len(batches))
    return np.concatenate([edge[:head], batches[order].reshape(-1), edge[head:]])


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
    group_by_length: bool = False  # batch rows of similar length together (less padding)

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
        end = 0  # rows of the stream up to the end of this buffer
        pending: list[_Block] = []
        have = 0
        fields = self.fields
        if self.group_by_length and fields is not None and "lengths" not in fields:
            fields = [*fields, "lengths"]
        for g, chunks in enumerate(self._groups(epoch)):
            n = self._rows(chunks)
            start, end = end, end + n  # this buffer's rows in the epoch's stream
            if skip >= n:  # resume: this buffer was consumed before; no read needed
                skip -= n
                continue
            parts = [self.source.read_chunk(int(c), fields, copy=False) for c in chunks]
            rows = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            if self.group_by_length and self.shuffle:
                head = -start % self.batch_size  # rows the batch left open still needs
                perm = grouped_permutation(
                    rows["lengths"], self.batch_size, head, self.seed, epoch, g
                )
            else:
                perm = buffer_permutation(n, self.seed, epoch, g, self.shuffle)
            perm = perm[skip:]
            skip = 0
            pending.append(_Block(rows, perm))
            have += len(perm)
            while have >= self.batch_size:
                yield _take(pending, self.batch_size)
                have -= self.batch_size
        if have and not self.drop_last:
            yield _take(pending, have)


@dataclass
class _Block:
    """A buffer's rows in chunk order, and the rows of it the stream has still to yield, in
    stream order: the permutation is applied batch by batch, so a row is copied once from the
    buffer into its batch (not a whole permuted buffer first, then a batch cut out of it)."""

    rows: dict[str, np.ndarray]
    order: np.ndarray


def _take(pending: list[_Block], n: int) -> dict[str, np.ndarray]:
    """The stream's next n rows, cut off the pending blocks (emptied ones dropped): one gather
    per array from the blocks' rows straight into the batch, a batch that spans two blocks
    included."""
    pieces, need = [], n
    while need:
        block = pending[0]
        if len(block.order) <= need:
            pieces.append((block.rows, block.order))
            need -= len(pending.pop(0).order)
        else:
            pieces.append((block.rows, block.order[:need]))
            block.order = block.order[need:]
            need = 0
    if len(pieces) == 1:
        rows, idx = pieces[0]
        return {k: np.take(v, idx, axis=0) for k, v in rows.items()}
    batch = {}
    for k, v in pieces[0][0].items():
        out = batch[k] = np.empty((n, *v.shape[1:]), dtype=v.dtype)
        at = 0
        for rows, idx in pieces:
            np.take(rows[k], idx, axis=0, out=out[at : at + len(idx)])
            at += len(idx)
    return batch


_END = object()


def prefetched(items: Iterator, depth: int = 2, device: str | None = None) -> Iterator:
    """`items` as they come, made up to `depth` ahead by a background thread.

    The training loop wraps its batches in this so that reading, decoding and pinning the next
    batches overlap the current step (numpy reads and torch ops release the GIL). The order is
    `items`' own, so resume, DDP and grouping stay exact. An exception in the thread is raised
    here at the item it stopped at; leaving the loop early (`close()`, or the generator being
    dropped) stops the thread within 0.1 s, without reading further. `device`: the step's
    device; a CUDA one with an index becomes the thread's current device too (CUDA's current
    device is per thread: pinning there would otherwise open a context on GPU 0 from every
    rank).
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            if device is not None and device.startswith("cuda:"):
                import torch  # only here: the loader itself is numpy

                torch.cuda.set_device(device)
            for x in items:
                if not put((x, None)):
                    return
            put((_END, None))
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            put((_END, e))

    thread = threading.Thread(target=run, name="hsk-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            x, error = q.get()
            if x is _END:
                if error is not None:
                    raise error
                return
            yield x
    finally:
        stop.set()
        thread.join()
