"""`hskcache build`: run the teacher once over a split and write the selected HSK to a cache.

Batches never straddle a shard (shard s covers rows [s*S, (s+1)*S)), so every value depends only
on its shard's rows and a resumed build recomputes exactly the bytes a straight one writes. Each
batch is trimmed to its longest row before the forward (dynamic padding).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hskcache import __version__
from hskcache.config import BuildConfig
from hskcache.data import Columns, Examples, load_split
from hskcache.errors import ConfigError
from hskcache.layout import ArraySpec, default_chunk_rows, layer_key, plan_arrays
from hskcache.manifest import FORMAT_VERSION, compute_identity
from hskcache.progress import progress_bar
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
from hskcache.teacher import ClsScoreProbe, Teacher, check_max_length, load_teacher, teacher_forward
from hskcache.writer import ShardWriter, finish, open_for_build, shard_done


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


@dataclass
class Encoded:
    input_ids: np.ndarray  # (N, T) int32
    token_type_ids: np.ndarray  # (N, T) int8
    lengths: np.ndarray  # (N,) int32


def plan_selection(cfg: BuildConfig, teacher_config, max_length: int) -> Plan:
    """Resolve an HSK config against the teacher's shape and the max length."""
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
    width = width_count(h, hsk.width)
    full_width = width == h
    fixed = None
    if not full_width and hsk.width_strategy != "magnitude":
        fixed = fixed_width_dims(h, hsk.width, hsk.width_strategy, hsk.seed)
    per_token = not full_width and hsk.width_strategy == "magnitude"
    l_top = cfg.l_top or max(t for _, t in pairs)
    return Plan(hsk, layers, tokens, width, fixed, per_token, l_top)


def tokenize(tokenizer, ex: Examples, max_length: int) -> Encoded:
    enc = tokenizer(
        ex.texts,
        ex.pairs,
        truncation=True,
        max_length=max_length,
        padding="max_length",
        return_tensors="np",
        return_token_type_ids=True,
    )
    ids = enc["input_ids"].astype(np.int32)
    tt = enc.get("token_type_ids")
    tt = np.zeros_like(ids, dtype=np.int8) if tt is None else tt.astype(np.int8)
    return Encoded(ids, tt, enc["attention_mask"].sum(axis=1).astype(np.int32))


def make_manifest(
    cfg: BuildConfig,
    teacher: Teacher,
    ex: Examples,
    plan: Plan,
    max_length: int,
    chunk_rows: int,
    shard_rows: int,
) -> dict:
    c = teacher.config
    n = len(ex)
    m = {
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "status": "building",
        "identity": "0" * 64,
        "teacher": {
            "name": teacher.name,
            "weights_sha256": teacher.weights_sha256,
            "model_type": c.model_type,
            "num_hidden_layers": c.num_hidden_layers,
            "hidden_size": c.hidden_size,
            "num_attention_heads": c.num_attention_heads,
            "num_labels": c.num_labels,
            "head_initialised": teacher.head_initialised,
            "config": c.to_diff_dict(),
        },
        "tokenizer": {
            "name": teacher.name,
            "sha256": teacher.tokenizer_sha256,
            "class": type(teacher.tokenizer).__name__,
            "pad_token_id": teacher.tokenizer.pad_token_id,
            "sep_token_id": teacher.tokenizer.sep_token_id,
        },
        "data": {
            "source": ex.source,
            "task": ex.task.name,
            "split": cfg.split,
            "fingerprint": ex.fingerprint(),
            "num_examples": n,
            "limit": cfg.limit,
            "label_names": list(ex.label_names) if ex.label_names is not None else None,
            "regression": ex.label_names is None,
            "pair": ex.pairs is not None,
        },
        "max_length": max_length,
        "selection": {
            **plan.hsk.to_dict(),
            "l_top": plan.l_top,
            "student_layers": cfg.student_layers,
            "score_layer": cfg.score_layer,
            "teacher_layers": list(cfg.teacher_layers) or None,
            "tokens_kept": plan.tokens,
            "width_kept": plan.width,
        },
        "layers": plan.layers,
        "width_dims": None if plan.width_dims is None else plan.width_dims.tolist(),
        "storage": {
            "value_dtype": cfg.value_dtype,
            "compressor": cfg.compressor,
            "chunk_rows": chunk_rows,
            "shard_rows": shard_rows,
        },
        "counts": {
            "num_examples": n,
            "num_chunks": math.ceil(n / chunk_rows),
            "num_shards": math.ceil(n / shard_rows),
        },
        "build": {"batch_size": cfg.batch_size, "device": cfg.device, "dtype": cfg.dtype},
        "stats": None,
    }
    m["identity"] = compute_identity(m)
    return m


def encode_values(values: torch.Tensor, value_dtype: str) -> dict[str, np.ndarray]:
    """(B, K, W) float values -> stored arrays: `values` (and `scales` for int8)."""
    if value_dtype == "float16":
        return {"values": values.to(torch.float16).numpy()}
    if value_dtype == "bfloat16":
        return {"values": values.to(torch.bfloat16).view(torch.uint16).numpy()}
    scale = values.abs().amax(dim=-1) / 127.0  # (B, K) per-token symmetric scale
    q = torch.where(scale[..., None] > 0, values / scale[..., None].clamp(min=1e-30), 0.0)
    return {
        "values": q.round().clamp(-127, 127).to(torch.int8).numpy(),
        "scales": scale.to(torch.float32).numpy(),
    }


def compute_batch(
    teacher: Teacher,
    probe: ClsScoreProbe | None,
    plan: Plan,
    enc: Encoded,
    labels: np.ndarray,
    lo: int,
    hi: int,
    value_dtype: str,
    device: str,
) -> dict[str, np.ndarray]:
    """Teacher forward + selection for rows [lo, hi): every stored array's rows."""
    T = int(enc.lengths[lo:hi].max())  # dynamic padding: trim to the longest row
    ids = torch.from_numpy(enc.input_ids[lo:hi, :T]).long().to(device)
    tt = torch.from_numpy(enc.token_type_ids[lo:hi, :T]).long().to(device)
    mask = (torch.arange(T)[None, :] < torch.from_numpy(enc.lengths[lo:hi])[:, None]).long()
    mask = mask.to(device)
    logits, hidden, scores = teacher_forward(teacher, ids, mask, tt, probe)
    sep = ids == teacher.tokenizer.sep_token_id
    out = {
        "input_ids": enc.input_ids[lo:hi],
        "token_type_ids": enc.token_type_ids[lo:hi],
        "lengths": enc.lengths[lo:hi],
        "labels": labels[lo:hi],
        "logits": logits.float().cpu().numpy(),
    }
    for layer in plan.layers:
        att = layer["score_attention"]
        positions, n_valid = select_tokens(
            None if att is None else scores[att].cpu(),
            mask.cpu(),
            sep.cpu(),
            plan.tokens,
            plan.hsk.length,
        )
        x = gather_tokens(hidden[layer["teacher"]].float().cpu(), positions)  # (B, K, H)
        key = layer_key(layer["teacher"])
        if plan.per_token_dims:
            x, dims = select_width_magnitude(x, plan.width)  # (B, K, W) each
            out[f"{key}/dims"] = dims.to(torch.int16).numpy()
        elif plan.width_dims is not None:
            x = x[..., plan.width_dims]
        out[f"{key}/positions"] = positions.to(torch.int16).numpy()
        out |= {f"{key}/{k}": v for k, v in encode_values(x, value_dtype).items()}
        out["n_valid"] = n_valid.to(torch.int16).numpy()
    return out


def build_cache(cfg: BuildConfig, show_progress: bool = True) -> Path:
    """Build (or resume, or confirm) the cache that `cfg` describes; return its path.

    Raises:
        HskError: any bad input, named; nothing is ever marked complete unless it is.
    """
    cfg.validate()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    columns = Columns(cfg.text_column, cfg.text_pair_column, cfg.label_column)
    ex = load_split(cfg.data, cfg.task, cfg.split, columns, cfg.limit)
    num_labels = 1 if ex.label_names is None else len(ex.label_names)
    teacher = load_teacher(cfg.teacher, num_labels, cfg.device, cfg.dtype, cfg.seed)
    max_length = cfg.max_length or ex.task.max_length
    check_max_length(teacher, max_length)
    plan = plan_selection(cfg, teacher.config, max_length)
    specs = plan_arrays(
        max_length,
        num_labels,
        ex.label_names is None,
        [la["teacher"] for la in plan.layers],
        plan.tokens,
        plan.width,
        cfg.value_dtype,
        plan.per_token_dims,
    )
    chunk_rows = cfg.chunk_rows or default_chunk_rows(specs, len(ex))
    shard_rows = chunk_rows * cfg.chunks_per_shard
    manifest = make_manifest(cfg, teacher, ex, plan, max_length, chunk_rows, shard_rows)
    root = Path(cfg.out)
    group = _open_distributed(
        root, manifest, specs, chunk_rows, shard_rows, cfg.overwrite, rank, world
    )
    if group is None:
        return root
    enc = tokenize(teacher.tokenizer, ex, max_length)
    n, n_shards = len(ex), manifest["counts"]["num_shards"]
    mine = [s for s in range(n_shards) if s % world == rank]
    todo = [s for s in mine if not shard_done(root, specs, s)]
    rows = lambda s: (s * shard_rows, min(n, (s + 1) * shard_rows))  # noqa: E731
    done_rows = sum(rows(s)[1] - rows(s)[0] for s in mine if s not in todo)
    probe_layers = {la["score_attention"] for la in plan.layers} - {None}
    probe = ClsScoreProbe(teacher.model, probe_layers) if probe_layers else None
    writer = ShardWriter(group, root)
    try:
        with progress_bar(
            f"build {root.name}",
            sum(rows(s)[1] - rows(s)[0] for s in mine),
            done_rows,
            show_progress,
        ) as advance:
            for s in todo:
                lo, hi = rows(s)
                parts = []
                for b in range(lo, hi, cfg.batch_size):
                    e = min(hi, b + cfg.batch_size)
                    parts.append(
                        compute_batch(
                            teacher, probe, plan, enc, ex.labels, b, e, cfg.value_dtype, cfg.device
                        )
                    )
                    advance(e - b)
                writer.put(lo, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    finally:
        writer.close()
        if probe is not None:
            probe.close()
    _barrier(world)
    if rank == 0:
        finish(group, {**manifest, "stats": cache_stats(root, group, manifest, specs)})
    return root


def _open_distributed(root, manifest, specs, chunk_rows, shard_rows, overwrite, rank, world):
    """Rank 0 creates or checks the store; the other `torchrun` ranks then open it."""
    if world == 1:
        return open_for_build(root, manifest, specs, chunk_rows, shard_rows, overwrite)
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    group = (
        open_for_build(root, manifest, specs, chunk_rows, shard_rows, overwrite)
        if rank == 0
        else None
    )
    flag = [group is not None]
    dist.broadcast_object_list(flag, src=0)
    if not flag[0]:
        return None
    if rank != 0:
        group = open_for_build(root, manifest, specs, chunk_rows, shard_rows, False)
    return group


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def cache_stats(root: Path, group, manifest: dict, specs: list[ArraySpec]) -> dict:
    """Size and HSK share of the finished cache, computed from what is on disk."""
    n = manifest["counts"]["num_examples"]
    lengths = group["lengths"][:].astype(np.float64)
    n_valid = group["n_valid"][:].astype(np.float64)
    t = manifest["teacher"]
    full = lengths.sum() * (t["num_hidden_layers"] + 1) * t["hidden_size"]
    kept = n_valid.sum() * len(manifest["layers"]) * manifest["selection"]["width_kept"]
    on_disk = sum(
        f.stat().st_size
        for spec in specs
        for f in (root / spec.name / "c").rglob("*")
        if f.is_file()
    )
    return {
        "hsk_fraction": float(kept / full),
        "bytes_per_example": on_disk / n,
        "full_fp16_bytes_per_example": float(full * 2 / n),
        "mean_length": float(lengths.mean()),
    }
