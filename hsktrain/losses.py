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


def hard_label_loss(
    student_logits: torch.Tensor, labels: torch.Tensor, regression: bool
) -> torch.Tensor:
    """CE to the gold class (MSE to the gold value for regression), averaged over the rows that
    have a gold label; unlabelled rows (label -1, or NaN for regression) add nothing, and a batch
    without any labelled row gives 0 (not NaN).

    Args:
        student_logits: (B, C) or (B, 1) for regression.
        labels: (B,) class ids, -1 for none; or float targets, NaN for none.
    """
    if regression:
        labelled = ~torch.isnan(labels)  # (B,)
        per_row = (student_logits.squeeze(-1).float() - labels.nan_to_num(0.0)) ** 2
    else:
        labelled = labels >= 0
        per_row = F.cross_entropy(student_logits.float(), labels.clamp(min=0), reduction="none")
    mask = labelled.to(per_row.dtype)
    return (per_row * mask).sum() / mask.sum().clamp(min=1)


def prediction_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    hard_weight: float,
    regression: bool,
) -> torch.Tensor:
    """Stage-2 loss: soft CE to the teacher (+ weighted hard CE); MSE to gold for regression.

    The hard terms (hard CE, regression's MSE) read gold labels, so they skip unlabelled rows
    (`hard_label_loss`); the soft CE trains on every row.
    """
    if regression:
        return hard_label_loss(student_logits, labels.float(), True)
    loss = soft_cross_entropy(student_logits, teacher_logits, temperature)
    if hard_weight:
        loss = loss + hard_weight * hard_label_loss(student_logits, labels, False)
    return loss
