"""Distillation losses (paper section 4; TinyBERT's recipe with pruned HSK targets)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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
        values: (B, K, W) teacher values, any float dtype: widened to float32 here, on their
            device (a cache's batches carry them as stored, float16 or bfloat16).
        dims: (B, K, W) or (W,) kept teacher dims; None when W is the full width.
        teacher_width: h_t.
        kept_only: compare only the kept dims; otherwise unkept dims are targets of 0 (paper).

    Returns:
        Mean squared error over every valid token and compared dim.
    """
    p = proj(gather_tokens(student_hidden, positions))  # (B, K, h_t); gather first: cheaper
    values = values.float()
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


class HSKLoss(nn.Module):
    """The HSK stage's loss as a module for any training loop: each stored layer's targets
    against the student's hidden state it pairs with, through the projection this module owns
    (so an optimizer over the module's parameters trains it too), summed over layers.

    Args:
        proj: student width -> teacher width (`hsktrain.projection.make_projection`).
        teacher_width: the teacher's hidden size (the cache's `info.teacher.hidden_size`).
        weight: multiplies the sum (`fit --hsk-weight`).
        kept_only: compare the kept dims only (`fit --kept-only`).
    """

    def __init__(
        self, proj: nn.Module, teacher_width: int, weight: float = 1.0, kept_only: bool = False
    ):
        super().__init__()
        self.proj, self.teacher_width = proj, teacher_width
        self.weight, self.kept_only = weight, kept_only

    def forward(self, hidden_states: tuple[torch.Tensor, ...], layers: list) -> torch.Tensor:
        """`hidden_states`: the student's (`output_hidden_states=True`); `layers`: a batch's
        `LayerTargets`. Returns the weighted sum of the layers' MSE (float32)."""
        loss = hidden_states[0].new_zeros((), dtype=torch.float32)
        for la in layers:
            loss = loss + self.weight * hsk_layer_loss(
                hidden_states[la.student],  # (B, T, h_s)
                self.proj,
                la.positions,  # (B, K)
                la.values,  # (B, K, W)
                la.dims,
                self.teacher_width,
                self.kept_only,
            )
        return loss

    def zero_prediction(self, layers: list) -> torch.Tensor:
        """What `forward` gives a projection that outputs zeros: the loss of knowing nothing
        (the mean square of the targets, weighted and normalised as `forward` does). An HSK
        loss reads as a share of it, whatever the teacher's scale: `fit` logs both."""
        loss = torch.zeros((), dtype=torch.float32)
        for la in layers:  # a 0-dim CPU tensor adds to one on any device
            valid = (la.positions >= 0).float()[..., None]  # (B, K, 1)
            kept = la.values.shape[-1] if self.kept_only and la.dims is not None else None
            width = kept or self.teacher_width  # unkept dims: targets of 0, squared to 0
            sq = (la.values.float() ** 2 * valid).sum()
            loss = loss + self.weight * sq / (valid.sum() * width).clamp(min=1)
        return loss


class PredictionLoss(nn.Module):
    """The prediction stage's loss as a module: soft cross-entropy to the teacher's logits at
    `temperature`, plus `hard_weight` x CE to the gold labels; MSE to gold for regression."""

    def __init__(
        self, temperature: float = 1.0, hard_weight: float = 0.0, regression: bool = False
    ):
        super().__init__()
        self.temperature, self.hard_weight, self.regression = temperature, hard_weight, regression

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        return prediction_loss(
            student_logits,
            teacher_logits,
            labels,
            self.temperature,
            self.hard_weight,
            self.regression,
        )
