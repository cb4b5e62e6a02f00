"""Distillation losses (paper section 4; TinyBERT's recipe with pruned HSK targets)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hskcache.selection import gather_tokens, scatter_width


def hsk_layer_loss(
    student_hidden: torch.Tensor,
    proj: torch.nn.Module,
    positions: torch.Tensor,
    values: torch.Tensor,
    dims: torch.Tensor | None,
    teacher_width: int,
    kept_only: bool = False,
) -> torch.Tensor:
    """MSE between the projected student states at the cached positions and the targets.

    Args:
        student_hidden: (B, T, h_s) one student hidden state.
        proj: h_s -> h_t map.
        positions: (B, K) token positions, -1 where an example has fewer than K.
        values: (B, K, W) teacher values.
        dims: (B, K, W) or (W,) kept teacher dims; None when W is the full width.
        teacher_width: h_t.
        kept_only: compare only the kept dims; otherwise unkept dims are targets of 0 (paper).

    Returns:
        Mean squared error over every valid token and compared dim.
    """
    p = proj(gather_tokens(student_hidden, positions))  # (B, K, h_t); gather first: cheaper
    valid = (positions >= 0).to(p.dtype)[..., None]  # (B, K, 1)
    if kept_only and dims is not None:
        p = p[..., dims] if dims.dim() == 1 else torch.gather(p, -1, dims)  # (B, K, W)
        target = values
    else:
        target = values if dims is None else scatter_width(values, dims, teacher_width)
    sq = (p - target) ** 2 * valid
    return sq.sum() / (valid.sum() * p.shape[-1]).clamp(min=1)


def soft_cross_entropy(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """-sum_c softmax(t/T)_c log softmax(s/T)_c, averaged over the batch."""
    target = F.softmax(teacher_logits / temperature, dim=-1)
    return -(target * F.log_softmax(student_logits / temperature, dim=-1)).sum(-1).mean()


def prediction_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    hard_weight: float,
    regression: bool,
) -> torch.Tensor:
    """Stage-2 loss: soft CE to the teacher (+ weighted hard CE); MSE to gold for regression."""
    if regression:
        return F.mse_loss(student_logits.squeeze(-1), labels.float())
    loss = soft_cross_entropy(student_logits, teacher_logits, temperature)
    if hard_weight:
        loss = loss + hard_weight * F.cross_entropy(student_logits, labels)
    return loss
