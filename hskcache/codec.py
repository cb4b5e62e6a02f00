"""How HSK values are stored: float32 -> float16, bfloat16 bits or int8 + a per-token scale,
and back. One module, so the write side (build, derive) and the read side (training, users)
cannot drift apart; the dtypes are in docs/design.md, "3. The format".
"""

from __future__ import annotations

import numpy as np
import torch

from hskcache.errors import CacheError, HskError


def encode_values(values: torch.Tensor, value_dtype: str) -> dict[str, np.ndarray]:
    """(B, K, W) float values -> stored arrays: `values` (and `scales` for int8).

    Raises:
        HskError: an int8 cache of a value beyond float16's range.
    """
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
