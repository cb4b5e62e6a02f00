"""Rows from the loader -> tensors for one step: trimmed inputs and the distillation targets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hskcache.codec import decode_dims, decode_values
from hskcache.layout import layer_key
from hskcache.selection import scatter_width
from hskcache.targets import LayerTargets, Plan, teacher_targets
from hskcache.teacher import accepts


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T), T = longest row of this batch
    attention_mask: torch.Tensor  # (B, T)
    token_type_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B,)
    logits: torch.Tensor | None  # (B, C) teacher logits
    layers: list[LayerTargets]  # HSK targets

    def model_inputs(self, model) -> dict[str, torch.Tensor]:
        kw = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if accepts(model, "token_type_ids"):
            kw["token_type_ids"] = self.token_type_ids
        return kw


def to_device(t: torch.Tensor, device: str) -> torch.Tensor:
    """Host -> device. To CUDA through pinned memory with a non-blocking copy, so the copy
    overlaps the previous step's kernels; on CPU the tensor itself (no copy)."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def inputs(rows: dict[str, np.ndarray], device: str, regression: bool) -> Batch:
    """Token inputs trimmed to the batch's longest row (dynamic padding)."""
    lengths = torch.from_numpy(rows["lengths"].astype(np.int64))
    T = int(lengths.max())
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    labels = torch.from_numpy(rows["labels"]).to(torch.float32 if regression else torch.long)
    return Batch(
        to_device(torch.from_numpy(rows["input_ids"][:, :T].astype(np.int64)), device),
        to_device(mask, device),
        to_device(torch.from_numpy(rows["token_type_ids"][:, :T].astype(np.int64)), device),
        to_device(labels, device),
        None,
        [],
    )


def from_cache(rows: dict[str, np.ndarray], manifest: dict, device: str, regression: bool) -> Batch:
    """A step's batch read from a cache: no teacher involved."""
    b = inputs(rows, device, regression)
    if "logits" in rows:  # a task-agnostic cache has none (HSK only)
        b.logits = to_device(torch.from_numpy(rows["logits"]), device)
    fixed = manifest["width_dims"]
    fixed = torch.tensor(fixed, device=device) if fixed is not None else None
    for la in manifest["layers"]:
        key = layer_key(la["teacher"])
        values = decode_values(manifest, rows[f"{key}/values"], rows.get(f"{key}/scales"))
        dims = rows.get(f"{key}/dims")  # gap bytes -> (B, K, W) ascending dims, one cumsum
        dims = decode_dims(dims, rows.get(f"{key}/dims_hi")) if dims is not None else None
        b.layers.append(
            LayerTargets(
                la["student"],
                la["teacher"],
                to_device(torch.from_numpy(rows[f"{key}/positions"].astype(np.int64)), device),
                to_device(torch.from_numpy(values), device),
                to_device(torch.from_numpy(dims), device) if dims is not None else fixed,
            )
        )
    return b


def from_teacher(
    rows: dict[str, np.ndarray],
    teacher,
    probe,
    plan: Plan,
    device: str,
    regression: bool,
    batch_threshold: float | None = None,
) -> Batch:
    """The same batch with targets computed live by the teacher (the online baseline)."""
    b = inputs(rows, device, regression)
    t = teacher_targets(teacher, probe, plan, b.input_ids, b.attention_mask, b.token_type_ids)
    b.logits = t.logits.to(device)
    for la in t.layers:
        if batch_threshold is not None:
            la = batch_magnitude(la, batch_threshold, teacher.config.hidden_size)
        la.positions, la.values = la.positions.to(device), la.values.to(device)
        la.dims = la.dims.to(device) if la.dims is not None else None
        b.layers.append(la)
    return b


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
