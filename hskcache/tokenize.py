"""Rows -> fixed-shape token arrays: the one tokenization of `hskcache build` and of training.

A cache's rows and a student's dev or online rows go through the same call, so they always
agree on truncation, padding and segment ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hskcache.data import Examples


@dataclass
class Encoded:
    input_ids: np.ndarray  # (N, T) int32
    token_type_ids: np.ndarray  # (N, T) int8
    lengths: np.ndarray  # (N,) int32


def tokenize(tokenizer, ex: Examples, max_length: int) -> Encoded:
    """Tokenize every row once, padded to `max_length` (the cache's fixed row shape).

    Pairs are truncated longest-first. Tokenizers without segment ids (MPNet, RoBERTa) get
    zeros, so every cache has the same arrays.
    """
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
