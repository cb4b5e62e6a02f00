"""Which slice of the teacher's hidden-state knowledge (HSK) to keep: depth, length, width.

Pure functions on tensors, shared by `hskcache build` and the online trainer, so offline and
online distillation select exactly the same targets; the configs they select by live in hsk.py.
Paper: Liu et al., ACL 2021, section 3.

Indices: hidden state 0 is the embedding output; a teacher with L layers has L+1 hidden states.
Tokens are returned in descending score order, so fewer tokens are a prefix of more; magnitude
dims in ascending dim order, ranked by |value| as stored (float16 or bfloat16), so a narrower
width is re-ranked exactly from a wider one's stored values (what `hskcache derive` relies on).
"""

from __future__ import annotations

import torch

from hskcache.errors import ConfigError
from hskcache.hsk import LENGTH_STRATEGIES, SCORE_LAYERS, teacher_layer_for, width_count

PAD_POSITION = -1  # fills position lists of examples shorter than K


def scoring_attention_layer(
    teacher_hidden: int, student_layer: int, n_student: int, n_teacher: int, mode: str
) -> int:
    """The teacher attention layer (0-based) whose [CLS] row scores tokens for a hidden state.

    `producing`: the layer that produced hidden state i, i.e. max(i - 1, 0).
    `uniform`: the layer a uniform map of all teacher layers would pair with this student layer
    (the paper's `att_ttop12` for a 12-layer teacher).
    """
    if mode == "producing":
        return max(teacher_hidden - 1, 0)
    if mode == "uniform":
        return max(teacher_layer_for(student_layer, n_student, n_teacher) - 1, 0)
    raise ConfigError(f"unknown score layer mode '{mode}'; use one of {SCORE_LAYERS}")


# --- length ------------------------------------------------------------------------------


def select_tokens(
    scores: torch.Tensor | None,
    attention_mask: torch.Tensor,
    sep_mask: torch.Tensor | None,
    k: int,
    strategy: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick K positions per example, best first; padding (and [SEP] for `-no-sep`) never.

    Args:
        scores: (B, T) head-averaged pre-softmax [CLS]-row scores; unused for `left`.
        attention_mask: (B, T) 1 on real tokens.
        sep_mask: (B, T) True on separator tokens; needed for `attention-no-sep`.
        k: positions to keep.
        strategy: one of LENGTH_STRATEGIES.

    Returns:
        positions (B, K) int64, PAD_POSITION past each row's valid count; n_valid (B,) int64.
    """
    B, T = attention_mask.shape
    selectable = attention_mask.bool()
    if strategy == "left":
        scores = -torch.arange(T, dtype=torch.float32).expand(B, T)
    elif strategy in ("attention", "attention-no-sep"):
        if scores is None:
            raise ConfigError(f"length strategy '{strategy}' needs attention scores")
        if strategy == "attention-no-sep":
            if sep_mask is None:
                raise ConfigError("attention-no-sep needs the separator positions")
            selectable = selectable & ~sep_mask.bool()  # per row: pairs have 2+ [SEP]s
    else:
        raise ConfigError(f"unknown length strategy '{strategy}'; use one of {LENGTH_STRATEGIES}")
    masked = scores.float().masked_fill(~selectable, float("-inf"))
    # Stable sort: ties go to the earlier position, so selection is deterministic everywhere.
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices  # (B, T)
    kk = min(k, T)
    positions = order[:, :kk]
    n_valid = selectable.sum(dim=1).clamp(max=k)
    keep = torch.arange(kk).expand(B, kk) < n_valid[:, None]
    positions = positions.masked_fill(~keep, PAD_POSITION)
    if kk < k:  # batch trimmed shorter than K: pad the list out to its fixed width
        pad = torch.full((B, k - kk), PAD_POSITION, dtype=positions.dtype)
        positions = torch.cat([positions, pad], dim=1)
    return positions, n_valid


def gather_tokens(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, T, H) states at (B, K) positions -> (B, K, H); padded positions give zeros."""
    valid = positions >= 0
    idx = positions.clamp(min=0)[..., None].expand(-1, -1, hidden.shape[-1])
    return torch.gather(hidden, 1, idx) * valid[..., None].to(hidden.dtype)


# --- width -------------------------------------------------------------------------------


def fixed_width_dims(hidden_size: int, fraction: float, strategy: str, seed: int) -> torch.Tensor:
    """One set of dims for a whole cache (`random` or `uniform`), as an int64 (k,) tensor.

    `random` keeps a seeded permutation's prefix (so a narrower cut is again random and a
    subset of a wider one). `uniform` is the paper's official mask: dims round(i / p) for
    i in 0 .. int(h * p) - 1, Python's round (halves to even: 20 x 0.4 -> 0, 2, 5, 8, 10, 12,
    15, 18), so 768 x 0.1 keeps the 76 dims 0, 10, ..., 750.
    """
    k = width_count(hidden_size, fraction, strategy)
    if strategy == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.randperm(hidden_size, generator=gen)[:k]
    if strategy == "uniform":
        return torch.tensor([round(i / fraction) for i in range(k)], dtype=torch.int64)
    raise ConfigError(f"'{strategy}' is not a fixed width strategy")


# The float each storage dtype keeps: magnitude ranks |value| *after* this rounding, so a cache's
# stored values alone re-rank exactly (`hskcache derive` cuts a narrower width from them).
# int8 caches are quantised from float16-rounded values, so they rank as float16 does.
RANK_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.float16}


def top_k_ascending(x: torch.Tensor, k: int, value_dtype: str = "float16") -> torch.Tensor:
    """Indices of the k largest |x rounded to `value_dtype`'s float| along the last axis, ties
    to the lower index, returned in ascending index order: (..., n) -> (..., k) int64."""
    key = x.to(RANK_DTYPES[value_dtype]).float().abs()  # exact in float32: a stable sort key
    top = torch.sort(key, dim=-1, descending=True, stable=True).indices[..., :k]
    return top.sort(dim=-1).values


def select_width_magnitude(
    x: torch.Tensor, k: int, value_dtype: str = "float16"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k dims by |value| per token: (..., H) -> values (..., k), dims (..., k).

    The paper thresholds |value| over a whole training batch; a cache needs a fixed shape, so
    we keep exactly k per token. The rank uses the value as the cache stores it (`value_dtype`;
    ties to the lower dim) and dims come back in ascending order, the order a cache stores them
    in (as gaps); a narrower width is then re-ranked from the stored values alone.
    """
    dims = top_k_ascending(x, k, value_dtype)
    return torch.gather(x, -1, dims), dims


def scatter_width(values: torch.Tensor, dims: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """Dense (..., H) target with kept dims filled and every other dim 0 (the paper's target).

    `dims` is either per token (same shape as `values`) or one (k,) set for the whole cache.
    """
    out = values.new_zeros(*values.shape[:-1], hidden_size)
    if dims.dim() == 1:
        out[..., dims] = values
        return out
    return out.scatter(-1, dims.long(), values)
