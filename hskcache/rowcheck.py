"""Cheap range checks on a chunk's rows, where the reader hands them out.

`hskcache verify` (and `fit`, unless `--no-verify`) proves every byte against the manifest's
sha256 table; a run that skips it would otherwise meet a damaged length, token id or position
as an index error deep inside torch. These checks cost a min/max per array of the chunk: they
catch values no build writes (ids past the vocabulary, positions outside their row), not values
that are wrong but in range (only the sha256 table catches those).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from hskcache.codec import dim_planes


@lru_cache(maxsize=8)
def _vocab_sizes(model_type: str, config_json: str) -> tuple[int | None, int]:
    """(vocab size, segment-id count) of the teacher, from the config the manifest stores.

    transformers >= 5 writes every field of the family into that config, so a field it lacks
    is one the family lacks (MPNet has no segment ids: one count, all 0) and nothing is
    imported: the first read stays cheap. Older versions omit the family's default values,
    which the family's config class then fills in (importing transformers, once).
    """
    import json

    stored = json.loads(config_json)
    major = str(stored.get("transformers_version", "0")).partition(".")[0]
    if "vocab_size" in stored and major.isdigit() and int(major) >= 5:
        return stored["vocab_size"], stored.get("type_vocab_size") or 1
    from transformers import AutoConfig

    kw = {k: v for k, v in stored.items() if k not in ("model_type", "transformers_version")}
    try:
        cfg = AutoConfig.for_model(model_type, **kw)
    except (ValueError, TypeError, KeyError):  # an unknown family: check what is stored
        return stored.get("vocab_size"), stored.get("type_vocab_size") or 2**15
    return getattr(cfg, "vocab_size", None), getattr(cfg, "type_vocab_size", None) or 1


def chunk_problems(manifest: Mapping, rows: Mapping[str, np.ndarray]) -> list[str]:
    """One "array 'NAME': values outside LO..HI" per array of `rows` holding impossible values."""
    import json

    t = manifest["teacher"]
    vocab, types = _vocab_sizes(t["model_type"], json.dumps(t["config"], sort_keys=True))
    max_length, K = manifest["max_length"], manifest["selection"]["tokens_kept"]
    bounds = {  # array: (lowest, highest) allowed value
        "lengths": (1, max_length),
        "token_type_ids": (0, types - 1),
        "n_valid": (0, K),
    }
    if vocab is not None:
        bounds["input_ids"] = (0, vocab - 1)
    if not manifest["data"]["regression"]:  # -1: an unlabelled row
        bounds["labels"] = (-1, len(manifest["data"]["label_names"] or [0]) - 1)
    problems = []
    for name, data in rows.items():
        if name.endswith("/positions"):
            lo, hi = -1, max_length - 1
        elif name in bounds:
            lo, hi = bounds[name]
        else:
            continue
        if data.size and (int(data.min()) < lo or int(data.max()) > hi):
            problems.append(f"array '{name}': values outside {lo}..{hi}")
    problems += dims_problems(rows, t["hidden_size"])
    regression = manifest["data"]["regression"]
    if "labels" in rows and regression and np.isinf(rows["labels"]).any():  # NaN: unlabelled
        problems.append("array 'labels': a label is infinite")
    if not problems and "lengths" in rows and "n_valid" in rows:
        lengths, n_valid = rows["lengths"].astype(np.int64), rows["n_valid"].astype(np.int64)
        if (n_valid > lengths).any():
            problems.append("array 'n_valid': values above the rows' lengths")
        real = np.arange(K)[None, :] < n_valid[:, None]
        for name in (n for n in rows if n.endswith("/positions")):
            pos = rows[name].astype(np.int64)
            inside = (pos >= 0) & (pos < lengths[:, None])
            if ((real & ~inside) | (~real & (pos != -1))).any():
                problems.append(f"array '{name}': positions outside their rows")
    return problems


def dims_problems(rows: Mapping[str, np.ndarray], hidden: int) -> list[str]:
    """Magnitude dims (stored as gap bytes) must decode to ascending dims inside 0..h-1: every
    gap but the first >= 1, and their sum (the last dim) < h. Checked on the bytes, without
    decoding (a chunk's cumsum would cost more than its read)."""
    problems = []
    for name in (n for n in rows if n.endswith("/dims")):
        low, high = rows[name], rows.get(f"{name}_hi")
        if high is None and dim_planes(hidden) == 2:
            continue  # the high bytes were not read: nothing to decode
        if not low.size:
            continue
        zero = low[..., 1:] == 0
        last = low.sum(axis=-1, dtype=np.int64)
        if high is not None:
            zero &= high[..., 1:] == 0
            last += high.sum(axis=-1, dtype=np.int64) << 8
        if zero.any() or int(last.max()) >= hidden:
            problems.append(f"array '{name}': dims not ascending inside 0..{hidden - 1}")
    return problems
