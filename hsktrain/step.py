"""One training step, shared by `fit` and `bench`: the loss, the optimizer, the lr schedule.

The student and the projection live in one module (`Distiller`) whose forward returns the
step's loss, so DistributedDataParallel synchronises both, autocast covers both, and gradient
clipping sees both. `train_step` is the whole update: lr, forward (under autocast), a finite
check, backward (through a GradScaler for fp16), clipping, optimizer step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hskcache.errors import HskError
from hskcache.precision import autocast
from hsktrain.batch import Batch
from hsktrain.losses import HSKLoss, PredictionLoss, hard_label_loss


class NonFiniteLossError(HskError):
    """The loss became NaN or infinite: training stops before the update."""


class Distiller(nn.Module):
    """Student + projection; `forward(batch, stage)` is the loss of one batch in one stage."""

    def __init__(self, model: nn.Module, proj: nn.Module, teacher_width: int, regression: bool):
        super().__init__()
        self.model, self.proj = model, proj
        self.teacher_width, self.regression = teacher_width, regression

    def forward(self, b: Batch, stage: str, cfg) -> torch.Tensor:
        """Args: a batch, the stage (hsk | pred | joint | ce), the FitConfig (loss weights)."""
        need_hidden = stage in ("hsk", "joint")
        out = self.model(**b.model_inputs(self.model), output_hidden_states=need_hidden)
        if stage == "ce":  # gold labels only: unlabelled rows add nothing
            return hard_label_loss(out.logits, b.labels, self.regression)
        loss = out.logits.new_zeros((), dtype=torch.float32)
        if need_hidden:
            hsk = HSKLoss(self.proj, self.teacher_width, cfg.hsk_weight, cfg.kept_only)
            loss = loss + hsk(out.hidden_states, b.layers)
        if stage in ("pred", "joint"):
            pred = PredictionLoss(cfg.temperature, cfg.hard_weight, self.regression)
            loss = loss + pred(out.logits, b.logits, b.labels)
        return loss


def no_decay(name: str) -> bool:
    """Biases and LayerNorm weights take no weight decay (BERT's recipe)."""
    return name.endswith("bias") or "norm" in name.lower()


def make_optimizer(net: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over every parameter of `net` (student and projection): two groups, decay / none."""
    named = list(net.named_parameters())
    return torch.optim.AdamW(
        [
            {"params": [p for n, p in named if not no_decay(n)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if no_decay(n)], "weight_decay": 0.0},
        ],
        lr=lr,
    )


def lr_schedule(step: int, warmup_steps: int, peak: float, total: int | None = None) -> float:
    """The lr of a stage's step number `step` (0-based): linear warmup, then constant (the
    paper's), or with `total` (the stage's steps) linear decay to 0 at step `total`, as
    transformers' `get_linear_schedule_with_warmup` does."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if total is None:
        return peak
    return peak * max(0.0, (total - step) / max(1, total - warmup_steps))


def make_scaler(device: str, amp: str) -> torch.amp.GradScaler:
    """A loss scaler for fp16 (its gradients underflow without one); a no-op otherwise."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=amp == "fp16")


def train_step(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    b: Batch,
    stage: str,
    lr: float,
    cfg,
    reduce=None,
) -> float:
    """One update on one batch; returns the batch loss (averaged over ranks by `reduce`).

    Args:
        net: a `Distiller`, or DistributedDataParallel around one.
        reduce: tensor -> float mean over DDP ranks (None: one process, `.item()`), so every
            rank logs and checks the same number and all stop together on a non-finite loss.

    Raises:
        NonFiniteLossError: the loss is NaN or infinite; the weights are left as they were.
    """
    for g in opt.param_groups:
        g["lr"] = lr
    with autocast(cfg.device, cfg.amp):
        loss = net(b, stage, cfg)
    value = reduce(loss.detach()) if reduce else loss.item()
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"the loss is {value}; stopped before updating the weights. Check the data for "
            "non-finite labels or targets, or lower the learning rate"
        )
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.max_grad_norm:
        scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)  # student + projection
    scaler.step(opt)
    scaler.update()
    return value
