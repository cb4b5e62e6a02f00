"""What a build (or a derive) records about the cache it writes: the manifest's fields, from the
teacher, the rows, the selection plan and the storage settings, and the finished cache's size
and HSK share. One writer for both, so a derived cache's manifest equals a direct build's.
"""

from __future__ import annotations

import math

import numpy as np

from hskcache import __version__
from hskcache.augment import Augment
from hskcache.codec import ids_dtype
from hskcache.config import BuildConfig
from hskcache.data import Examples, labelled_mask
from hskcache.hsk import SelectionConfig
from hskcache.manifest import FORMAT_VERSION, compute_identity
from hskcache.names import model_label
from hskcache.targets import Plan
from hskcache.teacher import Teacher


def selection_fields(plan: Plan, sel: SelectionConfig) -> dict:
    """The manifest's `selection`, `layers` and `width_dims`: one writer for build and derive,
    so a derived cache's manifest equals a direct build's."""
    return {
        "selection": {
            **plan.hsk.to_dict(),
            "l_top": plan.l_top,
            "student_layers": sel.student_layers,
            "score_layer": sel.score_layer,
            "teacher_layers": list(sel.teacher_layers) or None,
            "tokens_kept": plan.tokens,
            "width_kept": plan.width,
        },
        "layers": plan.layers,
        "width_dims": None if plan.width_dims is None else plan.width_dims.tolist(),
    }


def make_manifest(
    cfg: BuildConfig,
    teacher: Teacher,
    ex: Examples,
    plan: Plan,
    max_length: int,
    chunk_rows: int,
    shard_rows: int,
    assets: dict,
    labels: np.ndarray,
    augment: Augment | None = None,
) -> dict:
    """The new cache's manifest. `labels` are every stored row's (augmented rows after the
    source rows, unlabelled)."""
    c = teacher.config
    n = len(labels)
    m = {
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "status": "building",
        "identity": "0" * 64,
        "teacher": {
            "name": model_label(teacher.name),
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
            "name": model_label(teacher.name),
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
            "class_names": list(ex.class_names) if ex.class_names is not None else None,
            "regression": ex.label_names is None,
            "pair": ex.pairs is not None,
            "task_agnostic": ex.task_agnostic,
            "augment": augment.record() if augment is not None else None,
        },
        "max_length": max_length,
        **selection_fields(plan, cfg.selection),
        "storage": {
            "value_dtype": cfg.value_dtype,
            "compressor": cfg.compressor,
            "chunk_rows": chunk_rows,
            "shard_rows": shard_rows,
            "ids_dtype": ids_dtype(len(teacher.tokenizer)),
        },
        "counts": {
            "num_examples": n,
            "num_chunks": math.ceil(n / chunk_rows),
            "num_shards": math.ceil(n / shard_rows),
            "num_unlabelled": int((~labelled_mask(labels)).sum()),
        },
        "build": {
            "batch_size": cfg.batch_size,
            "batch_order": cfg.batch_order,
            "device": cfg.device,
            "dtype": cfg.dtype,
            "amp": cfg.amp,
        },
        "stats": None,
        "objects": None,
        "assets": assets,
    }
    m["identity"] = compute_identity(m)
    return m


def cache_stats(group, manifest: dict, objects: dict[str, dict]) -> dict:
    """Size and HSK share of the finished cache; sizes from the objects table `finish` computed
    (no listing of the store, which on object storage costs requests)."""
    n = manifest["counts"]["num_examples"]
    lengths = group["lengths"][:].astype(np.float64)
    n_valid = group["n_valid"][:].astype(np.float64)
    t = manifest["teacher"]
    full = lengths.sum() * (t["num_hidden_layers"] + 1) * t["hidden_size"]
    kept = n_valid.sum() * len(manifest["layers"]) * manifest["selection"]["width_kept"]
    on_disk = sum(o["bytes"] for key, o in objects.items() if "/c/" in key)  # shards only
    return {
        "hsk_fraction": float(kept / full),
        "bytes_per_example": on_disk / n,
        "full_fp16_bytes_per_example": float(full * 2 / n),
        "mean_length": float(lengths.mean()),
    }
