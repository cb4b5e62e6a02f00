"""The arrays of a cache and how they are chunked: the one place that knows the store layout.

A cache is a Zarr v3 group. Every array is chunked along the example axis with the same
`chunk_rows`, so chunk i of any array holds the same examples, and sharded with the same
`shard_rows`, so one build step writes shard s of every array whole. Each inner chunk carries a
crc32c (zarr's `Crc32cCodec`); the shard index carries its own.

    input_ids              (N, T)     uint16 | int32 (vocab > 65536)  token ids, padded to T  z
    token_type_ids         (N, T)     int8    segment ids (0 everywhere for MPNet-style pairs) z
    lengths                (N,)       int32   real tokens per example                          z
    labels                 (N,)       int64 (z) | float32 (regression); -1 (NaN) = no label
    logits                 (N, C)     float32 teacher logits (absent from a task-agnostic cache)
    n_valid                (N,)       int16   selected tokens per example (<= K)               z
    layers/h{t}/positions  (N, K)     int16   token positions, best first, -1 padded          z
    layers/h{t}/values     (N, K, W)  float16 | uint16 (bfloat16 bits) | int8
    layers/h{t}/scales     (N, K)     float32 per-token scale (int8 only)                 z
    layers/h{t}/dims       (N, K, W)  uint8   magnitude only: low bytes of the kept dims' gaps  z
    layers/h{t}/dims_hi    (N, K, W)  uint8   their high bytes (teachers wider than 256)       z

z: zstd-compressed whatever `--compressor` says. Those small arrays shrink 2-10x and cost
microseconds to decode; the values and logits stay raw unless `--compressor zstd`, so a local
read maps them straight from the shard file. Magnitude values are stored in
ascending dim order, the order of their dims (`codec.encode_dims`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VALUE_DTYPES = {"float16": "float16", "bfloat16": "uint16", "int8": "int8"}
COMPRESSORS = ("none", "zstd")
TARGET_CHUNK_BYTES = 2 * 2**20  # 2 MiB: cheap to read whole, few files once sharded


@dataclass(frozen=True)
class ArraySpec:
    name: str
    row_shape: tuple[int, ...]
    dtype: str
    compressed: bool = False  # zstd whatever the cache's compressor

    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def layer_key(teacher_hidden: int) -> str:
    return f"layers/h{teacher_hidden}"


def plan_arrays(
    max_length: int,
    num_labels: int,
    regression: bool,
    teacher_layers: list[int],
    tokens: int,
    width: int,
    value_dtype: str,
    per_token_dims: bool,
    ids_dtype: str,
    dim_planes: int,
) -> list[ArraySpec]:
    """Every array of a cache with this shape, in write order.

    `num_labels` 0 means task-agnostic rows (no logits array). `ids_dtype` is
    `codec.ids_dtype` of the vocabulary; `dim_planes` is `codec.dim_planes` of
    the teacher's width (1: `dims` alone, 2: with `dims_hi`).
    """
    specs = [
        ArraySpec("input_ids", (max_length,), ids_dtype, True),
        ArraySpec("token_type_ids", (max_length,), "int8", True),
        ArraySpec("lengths", (), "int32", True),
        ArraySpec("labels", (), "float32" if regression else "int64", not regression),
        ArraySpec("logits", (num_labels,), "float32"),
        ArraySpec("n_valid", (), "int16", True),
    ]
    if num_labels == 0:  # task-agnostic rows: no task head, so no logits (HSK only)
        specs = [s for s in specs if s.name != "logits"]
    for t in teacher_layers:
        key = layer_key(t)
        specs.append(ArraySpec(f"{key}/positions", (tokens,), "int16", True))
        specs.append(ArraySpec(f"{key}/values", (tokens, width), VALUE_DTYPES[value_dtype]))
        if value_dtype == "int8":
            # per-token scales share exponents: zstd halves them (40 -> 22 B/example, K=10)
            specs.append(ArraySpec(f"{key}/scales", (tokens,), "float32", True))
        if per_token_dims:
            for plane in ("dims", "dims_hi")[:dim_planes]:
                specs.append(ArraySpec(f"{key}/{plane}", (tokens, width), "uint8", True))
    return specs


def default_chunk_rows(specs: list[ArraySpec], num_examples: int) -> int:
    """Rows per chunk so the widest array's chunk is about TARGET_CHUNK_BYTES.

    Rounded down to a multiple of 64 (when above 64) so batches of common sizes tile chunks,
    and never above the example count: zarr stores an edge chunk at full size, so an oversized
    chunk would pad a small cache with zeros (MRPC dev, 408 rows, in 448-row chunks: values
    1,694 B/example instead of 1,540).
    """
    rows = max(1, TARGET_CHUNK_BYTES // max(s.row_bytes() for s in specs))
    rows = rows - rows % 64 if rows > 64 else rows
    return max(1, min(rows, num_examples))


def shard_key(spec: ArraySpec, shard: int) -> str:
    """Store key of shard `shard` of an array (zarr v3 default key encoding, '/' separated)."""
    return "/".join([spec.name, "c", str(shard), *["0"] * len(spec.row_shape)])
