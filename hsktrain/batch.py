"""Rows from the loader -> tensors for one step, on the step's device: trimmed inputs and the
distillation targets, decoded from the cache (`hskcache.targets.decode_rows`) or computed live
by the teacher (the online baseline)."""

from __future__ import annotations

import numpy as np
import torch

from hskcache.selection import scatter_width
from hskcache.targets import (
    Batch,
    LayerTargets,
    Plan,
    decode_rows,
    row_inputs,
    teacher_targets,
)


def inputs(rows: dict[str, np.ndarray], device: str, regression: bool) -> Batch:
    """Token inputs trimmed to the batch's longest row (dynamic padding)."""
    return row_inputs(rows, regression).to(device)


def from_cache(rows: dict[str, np.ndarray], manifest: dict, device: str) -> Batch:
    """A step's batch read from a cache: no teacher involved. HSK values stay in their stored
    16-bit dtype (the loss widens them on the step's device): half the bytes to pin and copy
    to a GPU, and no widening pass on the reader's core."""
    return decode_rows(manifest, rows, widen=False).to(device)


def from_teacher(
    rows: dict[str, np.ndarray],
    teacher,
    probe,
    plan: Plan,
    device: str,
    regression: bool,
    batch_threshold: float | None = None,
) -> Batch:
    """The same batch with targets computed live by the teacher (the online baseline): the
    inputs go to the device first (the teacher runs there), the targets it returns on the CPU
    follow."""
    b = inputs(rows, device, regression)
    t = teacher_targets(teacher, probe, plan, b.input_ids, b.attention_mask, b.token_type_ids)
    b.logits, b.layers = t.logits, t.layers
    if batch_threshold is not None:
        hidden = teacher.config.hidden_size
        b.layers = [batch_magnitude(la, batch_threshold, hidden) for la in t.layers]
    return b.to(device)


def batch_magnitude(la: LayerTargets, fraction: float, hidden: int) -> LayerTargets:
    """The paper's width rule: keep the top `fraction` of |values| over the whole batch.

    The threshold is shared by every token of the batch, so tokens keep different numbers of
    dims; the result is a dense full-width target with the rest set to 0.
    """
    dense = la.values if la.dims is None else scatter_width(la.values, la.dims, hidden)
    valid = (la.positions >= 0)[..., None].expand_as(dense)
    mags = dense.abs()[valid]
    k = max(1, round(fraction * mags.numel()))
    threshold = torch.topk(mags, k).values[-1]
    kept = torch.where((dense.abs() >= threshold) & valid, dense, torch.zeros_like(dense))
    return LayerTargets(la.student, la.teacher, la.positions, kept, None)
