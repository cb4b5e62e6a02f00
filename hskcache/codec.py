"""How HSK values are stored (float32 -> float16, bfloat16 bits or int8 + a per-token scale),
how magnitude dims are (ascending gap bytes) and token ids (uint16 when the vocabulary fits),
and back. One module, so the write side (build, derive) and the read side (training, users)
cannot drift apart; the dtypes are in docs/design.md, "3. The format".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hskcache.errors import CacheError, HskError

if TYPE_CHECKING:  # the read side (reader, verify, inspect) runs without importing torch
    import torch


def encode_values(values: torch.Tensor, value_dtype: str) -> dict[str, np.ndarray]:
    """(B, K, W) float values -> stored arrays: `values` (and `scales` for int8).

    Raises:
        HskError: an int8 cache of a value beyond float16's range.
    """
    import torch

    if value_dtype == "float16":
        return {"values": values.to(torch.float16).numpy()}
    if value_dtype == "bfloat16":
        return {"values": values.to(torch.bfloat16).view(torch.uint16).numpy()}
    # int8 quantises the float16-rounded values, so `hskcache derive` cuts an int8 cache out of
    # a float16 one that is byte-identical to this; the extra rounding is measured in README.md.
    values = values.to(torch.float16)
    if torch.isinf(values).any():
        raise HskError(
            "a hidden-state value exceeds float16's range (65504), which int8 caches are "
            "quantised from; use --value-dtype bfloat16"
        )
    values = values.float()
    scale = values.abs().amax(dim=-1) / 127.0  # (B, K) per-token symmetric scale
    q = torch.where(scale[..., None] > 0, values / scale[..., None].clamp(min=1e-30), 0.0)
    return {
        "values": q.round().clamp(-127, 127).to(torch.int8).numpy(),
        "scales": scale.to(torch.float32).numpy(),
    }


def decode_values(manifest: dict, values: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """Stored HSK values -> float32, whatever the storage dtype."""
    kind = manifest["storage"]["value_dtype"]
    if kind == "float16":
        return values.astype(np.float32)
    if kind == "bfloat16":  # bf16 bits are the top half of a float32
        return (values.astype(np.uint32) << 16).view(np.float32)
    if scales is None:
        raise CacheError("int8 values need their per-token scales")
    return values.astype(np.float32) * scales[..., None]


def values_tensor(
    manifest: dict, values: np.ndarray, scales: np.ndarray | None, widen: bool = True
) -> torch.Tensor:
    """Stored HSK values as a tensor: float32 (`widen`), or float16 and bfloat16 values in
    their own dtype without a copy, so the step widens them on its device (free on a GPU, and
    half the bytes to copy there); int8 values are always scaled to float32 here."""
    import torch

    kind = manifest["storage"]["value_dtype"]
    if widen or kind == "int8":
        return torch.from_numpy(decode_values(manifest, values, scales))
    t = torch.from_numpy(values)
    return t if kind == "float16" else t.view(torch.bfloat16)


# --- magnitude dims ------------------------------------------------------------------------
# A token's kept dims are stored ascending, as gaps (the first dim, then each dim minus the one
# before): gaps of a 10% width are mostly < 32, so their low bytes compress to about half a
# byte per dim (zstd) and decode with one cumsum. A gap can reach h - 1, so a teacher wider than
# 256 gets a second byte plane, `dims_hi`, which is nearly all zeros and compresses to almost
# nothing; keeping the planes apart (not one uint16 array) is what lets zstd see those zeros.
# Measured on real caches, zstd 3, B/example: SST-2 dev (MiniLM, 38 of 384 dims) gap bytes 210
# vs a 384-bit mask per token 232 (vs 450 for the int16 dims of format 3); MRPC dev (MPNet, 77
# of 768) 410 vs 453. Decoding 872 rows: 0.4 ms (cumsum) vs 12 ms (unpackbits + nonzero).


def dim_planes(hidden_size: int) -> int:
    """Byte planes of a dims gap: 1 while every gap fits a byte (h <= 256), else 2."""
    return 1 if hidden_size <= 256 else 2


def encode_dims(dims: np.ndarray, hidden_size: int) -> dict[str, np.ndarray]:
    """(..., W) ascending kept dims -> `dims` (low bytes of the gaps) and, for a teacher wider
    than 256, `dims_hi` (their high bytes); both uint8, same shape."""
    gaps = np.diff(dims.astype(np.int64), axis=-1, prepend=0)
    out = {"dims": (gaps & 0xFF).astype(np.uint8)}
    if dim_planes(hidden_size) == 2:
        out["dims_hi"] = (gaps >> 8).astype(np.uint8)
    return out


def decode_dims(low: np.ndarray, high: np.ndarray | None) -> np.ndarray:
    """Stored gap bytes -> (..., W) int64 kept dims, ascending."""
    if high is None:
        return np.cumsum(low, axis=-1, dtype=np.int64)
    return np.cumsum(low.astype(np.int64) | (high.astype(np.int64) << 8), axis=-1)


def ids_dtype(vocab_size: int) -> str:
    """Storage dtype of token ids: uint16 while the vocabulary fits it (BERT's 30,522), else
    int32; half the bytes of int32 before compression."""
    return "uint16" if vocab_size <= 2**16 else "int32"
