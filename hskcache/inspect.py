"""`hskcache inspect`: what a cache holds, how big it is, and how much of the full HSK it keeps."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from hskcache.data import labelled_mask
from hskcache.manifest import ManifestView
from hskcache.progress import progress_bar
from hskcache.reader import Cache
from hskcache.targets import stored_targets


def describe(cache: Cache) -> dict:
    """A JSON-ready summary: manifest highlights plus every array's shape and bytes on disk."""
    info = cache.info
    arrays = []
    for name, spec in cache.specs.items():
        arr = cache.group[name]
        arrays.append(
            {
                "name": name,
                "shape": list(arr.shape),
                "dtype": spec.dtype,
                "chunk_rows": arr.chunks[0],
                "bytes": int(arr.nbytes_stored()),
            }
        )
    sel, t, d = info.selection, info.teacher, info.data
    return {
        "path": cache.url,
        "status": info.status,
        "identity": info.identity,
        "content": info.content,
        "name": info.name,
        "teacher": f"{t.name} ({t.model_type}, {t.num_hidden_layers} layers, "
        f"hidden {t.hidden_size}, sha256 {t.weights_sha256[:12]})",
        # a task-agnostic cache stores no logits: its teacher's head is not read
        "teacher_head_initialised": t.head_initialised and not d.task_agnostic,
        "data": f"{d.task} {d.split} from {d.source} ({d.num_examples} examples, "
        + _extra_rows(info)
        + f"fingerprint {d.fingerprint[:12]})",
        "max_length": info.max_length,
        "selection": {
            "config": sel.name,
            "length": sel.length,
            "width_strategy": sel.width_strategy,
            "tokens_kept": sel.tokens_kept,
            "width_kept": f"{sel.width_kept}/{t.hidden_size}",
            "layers": [
                f"student {la.student} <- teacher {la.teacher}"
                + (
                    f" (scored by attention {la.score_attention})"
                    if la.score_attention is not None
                    else ""
                )
                for la in info.layers
            ],
        },
        "storage": asdict(info.storage),
        "counts": asdict(info.counts),
        "arrays": arrays,
        "total_bytes": sum(a["bytes"] for a in arrays),
        "stats": None if info.stats is None else asdict(info.stats),
        "floor_bytes_per_example": None if info.stats is None else floor_bytes(info),
        "kit": describe_kit(info),
    }


def floor_bytes(info: ManifestView) -> float:
    """The size floor of a cache, per example: its kept HSK values at 2 bytes each (fp16), with
    no ids, dims, padding or format around them. A cache is measured against it (`inspect`)."""
    s = info.stats
    return s.hsk_fraction * s.full_fp16_bytes_per_example  # kept values * 2 / examples


def describe_kit(info: ManifestView) -> dict:
    """The training kit the cache carries: tokenizer, student inits, bundled teacher.

    Sizes come from the objects table, so they are known once the build has finished.
    """
    section, objects = info.assets, info.objects or {}
    size = lambda keys: sum(objects[k].bytes for k in keys if k in objects)  # noqa: E731
    bundle = section.teacher
    return {
        "tokenizer": {
            "class": info.tokenizer.class_name,
            "sha256": info.tokenizer.sha256,
            "files": sorted(section.tokenizer),
        },
        "students": [
            {
                "name": name,
                "shape": dict(e.shape),
                "teacher_layers": list(e.teacher_layers),
                "bytes": size(e.files.values()),
                "sha256": e.sha256,
            }
            for name, e in section.students.items()
        ],
        "teacher_bundled": bundle is not None,
        "teacher_bytes": size(bundle.values()) if bundle else 0,
    }


def _extra_rows(info: ManifestView) -> str:
    """What `inspect` says of unlabelled, augmented and task-agnostic rows ('' for none)."""
    d, parts = info.data, []
    if info.counts.num_unlabelled:
        parts.append(f"{info.counts.num_unlabelled} unlabelled")
    if d.augment is not None:
        parts.append(f"{d.augment['n']} augmented variants a row, seed {d.augment['seed']}")
    if d.task_agnostic:
        parts.append("task-agnostic: HSK only")
    return "".join(f"{p}, " for p in parts)


def target_stats(cache: Cache, show_progress: bool = False) -> dict:
    """How big the teacher's targets are, read from every chunk (`inspect --stats`).

    An HSK loss means little alone: MSE scales with the teacher's hidden states, which differ
    several-fold between teachers. Per layer this gives the loss `fit` would report for a
    student whose projection outputs zeros (the paper's loss: unkept dims are targets of 0), so
    an HSK stage's train loss reads as a share of it. For a classifier it also gives the
    teacher's mean prediction entropy at temperature 1: the floor of the prediction stage's
    soft cross-entropy, which a student reaches only by matching the teacher exactly.
    """
    info = cache.info
    width = info.teacher.hidden_size
    tokens = {la.teacher: 0 for la in info.layers}
    squares = {la.teacher: 0.0 for la in info.layers}
    peak = {la.teacher: 0.0 for la in info.layers}
    entropy = agree = 0.0
    fields = [cache.layer_fields(t) for t in tokens]  # values and positions: dims do not count
    names = [n for f in fields for k, n in f.items() if k not in ("dims", "dims_hi")]
    scored = not (info.data.regression or info.data.task_agnostic)  # a classifier's logits
    names += ["logits", "labels"] if scored else []
    labelled = 0
    with progress_bar("stats", cache.num_chunks, 0, show_progress, unit="chunks") as advance:
        for i in range(cache.num_chunks):
            rows = cache.read_chunk(i, names)  # one read a chunk: every layer, then the logits
            for la in stored_targets(cache.manifest, rows):
                t = la.teacher
                kept = la.values[la.positions >= 0].double().numpy()  # (tokens, W)
                tokens[t] += len(kept)
                squares[t] += float(np.square(kept).sum())
                peak[t] = max(peak[t], float(np.abs(kept).max(initial=0.0)))
            if scored:
                logits = rows["logits"].astype(np.float64)
                logp = logits - logits.max(-1, keepdims=True)
                logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
                entropy -= float((np.exp(logp) * logp).sum())
                gold = labelled_mask(rows["labels"])  # unlabelled rows: no gold to agree with
                agree += int((logits.argmax(-1) == rows["labels"])[gold].sum())
                labelled += int(gold.sum())
            advance(1)
    layers = [
        {
            "teacher_layer": t,
            "tokens": tokens[t],
            "max_abs": peak[t],
            "zero_prediction_loss": squares[t] / max(tokens[t] * width, 1),
        }
        for t in tokens
    ]
    n = cache.num_examples
    return {
        "layers": layers,
        "zero_prediction_loss": sum(la["zero_prediction_loss"] for la in layers),
        "teacher_entropy": entropy / n if scored else None,
        "teacher_label_accuracy": agree / labelled if scored and labelled else None,
    }
