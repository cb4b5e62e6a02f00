"""The arrays of a cache and how they are chunked: the one place that knows the store layout.

A cache is a Zarr v3 group. Every array is chunked along the example axis with the same
`chunk_rows`, so chunk i of any array holds the same examples, and sharded with the same
`shard_rows`, so one build step writes shard s of every array whole. Each inner chunk carries a
crc32c (zarr's `Crc32cCodec`); the shard index carries its own.

    input_ids              (N, T)     int32   token ids, padded to max length T
    token_type_ids         (N, T)     int8    segment ids (0 everywhere for MPNet-style pairs)
    lengths                (N,)       int32   real tokens per example
    labels                 (N,)       int64 | float32 (regression); -1 = no label
    logits                 (N, C)     float32 teacher logits
    n_valid                (N,)       int16   selected tokens per example (<= K)
    layers/h{t}/positions  (N, K)     int16   token positions, best first, -1 padded
    layers/h{t}/values     (N, K, W)  float16 | uint16 (bfloat16 bits) | int8
    layers/h{t}/scales     (N, K)     float32 per-token scale (int8 only)
    layers/h{t}/dims       (N, K, W)  int16   kept dims, largest |value| first (magnitude only)
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
) -> list[ArraySpec]:
    """Every array of a cache with this shape, in write order."""
    specs = [
        ArraySpec("input_ids", (max_length,), "int32"),
        ArraySpec("token_type_ids", (max_length,), "int8"),
        ArraySpec("lengths", (), "int32"),
        ArraySpec("labels", (), "float32" if regression else "int64"),
        ArraySpec("logits", (num_labels,), "float32"),
        ArraySpec("n_valid", (), "int16"),
    ]
    for t in teacher_layers:
        key = layer_key(t)
        specs.append(ArraySpec(f"{key}/positions", (tokens,), "int16"))
        specs.append(ArraySpec(f"{key}/values", (tokens, width), VALUE_DTYPES[value_dtype]))
        if value_dtype == "int8":
            specs.append(ArraySpec(f"{key}/scales", (tokens,), "float32"))
        if per_token_dims:
            specs.append(ArraySpec(f"{key}/dims", (tokens, width), "int16"))
    return specs


def default_chunk_rows(specs: list[ArraySpec], num_examples: int) -> int:
    """Rows per chunk so the widest array's chunk is about TARGET_CHUNK_BYTES.

    Rounded down to a multiple of 64 (when above 64) so batches of common sizes tile chunks,
    and never above the example count rounded up to 64: zarr stores an edge chunk at full size,
    so an oversized chunk would pad a small cache with zeros.
    """
    rows = max(1, TARGET_CHUNK_BYTES // max(s.row_bytes() for s in specs))
    rows = rows - rows % 64 if rows > 64 else rows
    return min(rows, -(-num_examples // 64) * 64)


def shard_key(spec: ArraySpec, shard: int) -> str:
    """Store key of shard `shard` of an array (zarr v3 default key encoding, '/' separated)."""
    return "/".join([spec.name, "c", str(shard), *["0"] * len(spec.row_shape)])
