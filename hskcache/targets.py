"""A batch's distillation targets, either way they come: from the teacher (forward, then the
configured selection; shared by `hskcache build`, which stores them, and `hsktrain fit
--online-teacher`, which uses them live, so offline and online distillation see the same
knowledge) or decoded from a cache's stored rows (the one place that knows how stored layers
are encoded, so a reader of the cache never handles codecs or store keys).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hskcache.codec import decode_dims, values_tensor
from hskcache.errors import ConfigError
from hskcache.hsk import HskConfig, SelectionConfig, depth_pairs, width_count
from hskcache.layout import layer_key
from hskcache.selection import (
    fixed_width_dims,
    gather_tokens,
    scoring_attention_layer,
    select_tokens,
    select_width_magnitude,
)
from hskcache.teacher import ClsScoreProbe, Teacher, accepts, teacher_forward


@dataclass(frozen=True)
class Plan:
    """The resolved selection: which states, how many tokens (K) and dims (W) per example."""

    hsk: HskConfig
    layers: list[dict]  # {"student", "teacher", "score_attention"}
    tokens: int  # K
    width: int  # W
    width_dims: torch.Tensor | None  # fixed dims (random/uniform), None otherwise
    per_token_dims: bool  # magnitude: dims stored per token
    l_top: int
    value_dtype: str = "float16"  # storage dtype: magnitude ranks |value| rounded to it


def plan_selection(
    sel: SelectionConfig,
    n_teacher: int,
    hidden_size: int,
    max_length: int,
    value_dtype: str = "float16",
) -> Plan:
    """Resolve a selection against the teacher's shape and the max length.

    Args:
        sel: the selection settings (of a build, a derive or an online fit).
        n_teacher: the teacher's transformer layers (hidden states 0..n_teacher).
        hidden_size: the teacher's hidden width.
        max_length: tokens per example.
        value_dtype: the storage dtype (a build's; float16 for an online fit): magnitude width
            ranks |value| after rounding to it, so stored values re-rank exactly.

    Raises:
        ConfigError: a selection the teacher or the max length cannot provide.
    """
    hsk = sel.parse()
    h = hidden_size
    pairs = depth_pairs(
        sel.student_layers, n_teacher, hsk.layers, sel.l_top, sel.teacher_layers or None
    )
    all_tokens = hsk.tokens is None
    tokens = max_length if all_tokens else hsk.tokens
    if tokens > max_length:
        raise ConfigError(
            f"HSK config '{hsk.name}' keeps {tokens} tokens but max length is "
            f"{max_length}; lower the 't' or raise --max-length"
        )
    if all_tokens:  # all real tokens, in position order
        hsk = HskConfig(hsk.layers, None, hsk.width, "left", hsk.width_strategy, hsk.seed)
    scored = hsk.length != "left"
    layers = [
        {
            "student": s,
            "teacher": t,
            "score_attention": scoring_attention_layer(
                t, s, sel.student_layers, n_teacher, sel.score_layer
            )
            if scored
            else None,
        }
        for s, t in pairs
    ]
    width = width_count(h, hsk.width, hsk.width_strategy)
    full_width = width == h
    fixed = None
    if not full_width and hsk.width_strategy != "magnitude":
        fixed = fixed_width_dims(h, hsk.width, hsk.width_strategy, hsk.seed)
    per_token = not full_width and hsk.width_strategy == "magnitude"
    l_top = sel.l_top or max(t for _, t in pairs)
    return Plan(hsk, layers, tokens, width, fixed, per_token, l_top, value_dtype)


@dataclass
class LayerTargets:
    student: int
    teacher: int
    positions: torch.Tensor  # (B, K) int64, -1 padded
    values: torch.Tensor  # (B, K, W) float32
    dims: torch.Tensor | None  # (B, K, W) per token, (W,) fixed, or None (full width)


@dataclass
class BatchTargets:
    logits: torch.Tensor  # (B, C)
    n_valid: torch.Tensor  # (B,)
    layers: list[LayerTargets]


def teacher_targets(
    teacher: Teacher,
    probe: ClsScoreProbe | None,
    plan: Plan,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor | None,
) -> BatchTargets:
    """Run the teacher on one (trimmed) batch and select its HSK per `plan` (returned on CPU)."""
    logits, hidden, scores = teacher_forward(
        teacher, input_ids, attention_mask, token_type_ids, probe
    )
    mask = attention_mask.cpu()
    sep = (input_ids == teacher.tokenizer.sep_token_id).cpu()
    layers, n_valid = [], None
    for layer in plan.layers:
        att = layer["score_attention"]
        positions, n_valid = select_tokens(
            None if att is None else scores[att].cpu(), mask, sep, plan.tokens, plan.hsk.length
        )
        # (B, K, H), gathered where the teacher ran: only the kept tokens are widened and copied
        h = hidden[layer["teacher"]]
        x = gather_tokens(h, positions.to(h.device)).float().cpu()
        dims = plan.width_dims
        if plan.per_token_dims:
            x, dims = select_width_magnitude(x, plan.width, plan.value_dtype)  # (B, K, W) each
        elif dims is not None:
            x = x[..., dims]
        layers.append(LayerTargets(layer["student"], layer["teacher"], positions, x, dims))
    return BatchTargets(logits.float().cpu(), n_valid, layers)


@dataclass
class Batch:
    """Rows ready for a student's forward and its losses: token inputs trimmed to the longest
    row (dynamic padding), gold labels, and the teacher's logits and HSK targets (absent for
    rows that carry none: raw data, CE only)."""

    input_ids: torch.Tensor  # (B, T) int64, T = the longest row of these rows
    attention_mask: torch.Tensor  # (B, T)
    token_type_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B,) int64, float32 for regression
    logits: torch.Tensor | None  # (B, C) teacher logits
    layers: list[LayerTargets]  # HSK targets, one per stored layer

    def model_inputs(self, model) -> dict[str, torch.Tensor]:
        """The keyword inputs `model` takes (MPNet has no token_type_ids)."""
        kw = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if accepts(model, "token_type_ids"):
            kw["token_type_ids"] = self.token_type_ids
        return kw

    def to(self, device: str) -> Batch:
        """The same batch on `device` (to CUDA through pinned memory, non-blocking)."""
        move = lambda x: None if x is None else to_device(x, device)  # noqa: E731
        layers = [
            LayerTargets(la.student, la.teacher, move(la.positions), move(la.values), move(la.dims))
            for la in self.layers
        ]
        return Batch(
            move(self.input_ids),
            move(self.attention_mask),
            move(self.token_type_ids),
            move(self.labels),
            move(self.logits),
            layers,
        )


def to_device(t: torch.Tensor, device: str) -> torch.Tensor:
    """Host -> device. A CPU tensor goes to CUDA through pinned memory with a non-blocking
    copy, so the copy overlaps the previous step's kernels; a tensor already there, or any on
    CPU, is itself (no copy)."""
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def row_inputs(rows: dict[str, np.ndarray], regression: bool) -> Batch:
    """Stored (or tokenized) rows' token inputs and labels, trimmed to the longest row."""
    lengths = torch.from_numpy(rows["lengths"].astype(np.int64))
    T = int(lengths.max())
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    labels = torch.from_numpy(rows["labels"]).to(torch.float32 if regression else torch.long)
    return Batch(
        torch.from_numpy(rows["input_ids"][:, :T].astype(np.int64)),
        mask,
        torch.from_numpy(rows["token_type_ids"][:, :T].astype(np.int64)),
        labels,
        None,
        [],
    )


def decode_rows(manifest: dict, rows: dict[str, np.ndarray], widen: bool = True) -> Batch:
    """Rows read from a cache (`Cache.read`, a loader's batch) as a decoded CPU batch: the
    teacher's logits and every stored layer's targets (`stored_targets`) with the inputs."""
    b = row_inputs(rows, manifest["data"]["regression"])
    b.logits = torch.from_numpy(rows["logits"]) if "logits" in rows else None
    b.layers = stored_targets(manifest, rows, widen)
    return b


def stored_targets(
    manifest: dict, rows: dict[str, np.ndarray], widen: bool = True
) -> list[LayerTargets]:
    """Every stored layer of some rows read from a cache, decoded on the CPU.

    `rows` maps array names to the rows read (`Cache.read`, a loader's batch); int8 values
    come back scaled to float32, float16 and bfloat16 ones widened to float32 (or, without
    `widen`, as stored: the training step widens them on its device), and per-token dims
    unpacked from their gap bytes (one cumsum) to ascending indices. Fixed width dims (random /
    uniform) come back as one (W,) tensor shared by every token; a full-width layer has none.
    """
    fixed = manifest["width_dims"]
    fixed = torch.tensor(fixed) if fixed is not None else None
    out = []
    for la in manifest["layers"]:
        key = layer_key(la["teacher"])
        values = values_tensor(manifest, rows[f"{key}/values"], rows.get(f"{key}/scales"), widen)
        dims = rows.get(f"{key}/dims")
        if dims is not None:
            dims = torch.from_numpy(decode_dims(dims, rows.get(f"{key}/dims_hi")))
        positions = torch.from_numpy(rows[f"{key}/positions"].astype(np.int64))
        out.append(
            LayerTargets(
                la["student"],
                la["teacher"],
                positions,
                values,
                dims if dims is not None else fixed,
            )
        )
    return out
