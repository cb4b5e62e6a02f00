"""A cache as a `torch.utils.data.IterableDataset`, for training loops other than `hsktrain fit`
(a plain PyTorch loop, a Hugging Face `Trainer`).

It yields single decoded rows in exactly the order `fit`'s loader streams them (the seeded
two-level chunk shuffle of `loader.py`: a pure function of seed and epoch), so a `DataLoader`
with batch size B and `collate` gives `fit`'s batches of size B, and the same losses. Rows are
read and decoded a chunk-sized block at a time (one vectorised decode), then handed out one by
one.

Under torchrun each rank takes every world-th chunk of the epoch's order, as `fit` does. With
`DataLoader` workers each worker takes a disjoint share of this rank's chunks: every row still
comes once per epoch, in another order than `fit`'s. Exact resume (`state_dict` /
`load_state_dict`) counts the rows this process has handed out, so it is exact with
`num_workers=0`, which is what `fit` itself uses (local shards are memory-mapped: reading needs
no worker processes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import IterableDataset, get_worker_info

from hskcache.reader import Cache, open_cache
from hskcache.targets import Batch, LayerTargets, decode_rows
from hsktrain.loader import STAGE_STRIDE, ChunkShuffleLoader


class CacheDataset(IterableDataset):
    """Every row of a cache once per epoch, decoded: one dict of CPU tensors per row.

    A row holds `input_ids` and `token_type_ids` (its own length), `labels`, `logits` (the
    teacher's), and `layers`: one `(positions, values, dims)` per stored layer; `collate`
    turns a list of rows into a padded `Batch`.

    Args:
        cache: an open cache or its path / URL.
        seed: the shuffle's seed (`fit --seed`).
        shuffle: False reads rows in stored order.
        buffer_chunks: chunks shuffled together (`fit --buffer-chunks`).
        stage: whose shuffles to replay: `fit`'s stage number (0 the first, 1 the second of
            two-stage), so each stage of a two-stage recipe reads its rows in `fit`'s order.
    """

    def __init__(
        self,
        cache: Cache | str | os.PathLike,
        seed: int = 0,
        shuffle: bool = True,
        buffer_chunks: int = 4,
        stage: int = 0,
    ):
        super().__init__()
        self.cache = cache if isinstance(cache, Cache) else open_cache(str(cache))
        self.seed, self.shuffle, self.buffer_chunks = seed, shuffle, buffer_chunks
        self.stage = stage
        self.epoch = 0
        self.seen = 0  # rows of this epoch already handed out (by this process)

    def set_epoch(self, epoch: int) -> None:
        """Start epoch `epoch` (its own shuffle) from its first row."""
        if epoch != self.epoch:
            self.epoch, self.seen = epoch, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        """Resume where `state_dict` was taken: the next row is the one that would have come."""
        self.epoch, self.seen = int(state["epoch"]), int(state["seen"])

    def _loader(self) -> ChunkShuffleLoader:
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        worker = get_worker_info()
        if worker is not None:  # a disjoint share of this rank's chunks per worker
            rank, world = rank * worker.num_workers + worker.id, world * worker.num_workers
        return ChunkShuffleLoader(
            self.cache,
            self.cache.chunk_rows,
            self.seed,
            self.buffer_chunks,
            self.shuffle,
            rank=rank,
            world=world,
        )

    def __len__(self) -> int:
        """Rows this rank reads in an epoch."""
        return self._loader().rows_per_epoch(self._order)

    @property
    def _order(self) -> int:
        """The loader's epoch number of this epoch's shuffle."""
        return self.stage * STAGE_STRIDE + self.epoch

    def __iter__(self) -> Iterator[dict]:
        loader = self._loader()
        block = loader.batch_size
        skip = self.seen % block  # the stream does not depend on the block size: resume
        for rows in loader.iterate(self._order, self.seen // block):
            b = decode_rows(self.cache.manifest, rows)
            lengths = b.attention_mask.sum(1).tolist()
            for i in range(skip, len(lengths)):
                n = lengths[i]
                self.seen += 1
                yield {
                    "input_ids": b.input_ids[i, :n],
                    "token_type_ids": b.token_type_ids[i, :n],
                    "labels": b.labels[i],
                    "logits": None if b.logits is None else b.logits[i],
                    "layers": [_row_layer(la, i) for la in b.layers],
                }
            skip = 0
        self.epoch, self.seen = self.epoch + 1, 0


def _row_layer(la: LayerTargets, i: int) -> tuple:
    dims = la.dims if la.dims is None or la.dims.dim() == 1 else la.dims[i]  # (W,) is shared
    return (la.student, la.teacher, la.positions[i], la.values[i], dims)


def collate(rows: list[dict]) -> Batch:
    """Rows of `CacheDataset` -> one `Batch`, padded to its longest row (as `fit` pads)."""
    ids = pad_sequence([r["input_ids"] for r in rows], batch_first=True)
    lengths = torch.tensor([len(r["input_ids"]) for r in rows])
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    types = pad_sequence([r["token_type_ids"] for r in rows], batch_first=True)
    logits = None if rows[0]["logits"] is None else torch.stack([r["logits"] for r in rows])
    layers = []
    for j, (student, teacher, _, _, dims) in enumerate(rows[0]["layers"]):
        per_row = [r["layers"][j] for r in rows]
        if dims is not None and dims.dim() == 2:  # per-token dims, one (K, W) per row
            dims = torch.stack([x[4] for x in per_row])
        positions = torch.stack([x[2] for x in per_row])
        values = torch.stack([x[3] for x in per_row])
        layers.append(LayerTargets(student, teacher, positions, values, dims))
    labels = torch.stack([r["labels"] for r in rows])
    return Batch(ids, mask, types, labels, logits, layers)
