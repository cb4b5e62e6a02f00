"""Teacher targets for one batch: forward, then the configured selection. Shared by
`hskcache build` (which stores them) and `hsktrain fit --online-teacher` (which uses them live),
so offline and online distillation see the same knowledge.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hskcache.errors import ConfigError
from hskcache.selection import (
    HskConfig,
    depth_pairs,
    fixed_width_dims,
    gather_tokens,
    parse_hsk,
    scoring_attention_layer,
    select_tokens,
    select_width_magnitude,
    width_count,
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


def plan_selection(cfg, teacher_config, max_length: int) -> Plan:
    """Resolve an HSK config against the teacher's shape and the max length.

    `cfg` is any config with the selection fields of `BuildConfig` (hsk, length,
    width_strategy, seed, student_layers, l_top, teacher_layers, score_layer).
    """
    hsk = parse_hsk(cfg.hsk, cfg.length, cfg.width_strategy, cfg.seed)
    n_teacher, h = teacher_config.num_hidden_layers, teacher_config.hidden_size
    pairs = depth_pairs(
        cfg.student_layers, n_teacher, hsk.layers, cfg.l_top, cfg.teacher_layers or None
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
                t, s, cfg.student_layers, n_teacher, cfg.score_layer
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
    l_top = cfg.l_top or max(t for _, t in pairs)
    return Plan(hsk, layers, tokens, width, fixed, per_token, l_top)


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
            x, dims = select_width_magnitude(x, plan.width)  # (B, K, W) each
        elif dims is not None:
            x = x[..., dims]
        layers.append(LayerTargets(layer["student"], layer["teacher"], positions, x, dims))
    return BatchTargets(logits.float().cpu(), n_valid, layers)
