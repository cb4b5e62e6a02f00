"""Teacher targets for one batch: forward, then the configured selection. Shared by
`hskcache build` (which stores them) and `hsktrain fit --online-teacher` (which uses them live),
so offline and online distillation see the same knowledge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hskcache.errors import ConfigError
from hskcache.hsk import HskConfig, SelectionConfig, depth_pairs, width_count
from hskcache.selection import (
    fixed_width_dims,
    gather_tokens,
    scoring_attention_layer,
    select_tokens,
    select_width_magnitude,
)
from hskcache.teacher import ClsScoreProbe, Teacher, teacher_forward


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
    """Run the teacher on one (trimmed) batch and select its HSK per `plan` (all on CPU)."""
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
        x = gather_tokens(hidden[layer["teacher"]].float().cpu(), positions)  # (B, K, H)
        dims = plan.width_dims
        if plan.per_token_dims:
            x, dims = select_width_magnitude(x, plan.width, plan.value_dtype)  # (B, K, W) each
        elif dims is not None:
            x = x[..., dims]
        layers.append(LayerTargets(layer["student"], layer["teacher"], positions, x, dims))
    return BatchTargets(logits.float().cpu(), n_valid, layers)
