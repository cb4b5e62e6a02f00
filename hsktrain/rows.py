"""Raw data -> in-memory rows shaped like a cache's (ids, segment ids, lengths, labels)."""

from __future__ import annotations

import numpy as np

from hskcache.data import Columns, DataInput, Examples, labelled_mask, load_split
from hskcache.tokenize import tokenize
from hsktrain.loader import ArraySource


def encode_split(
    data: DataInput,
    task: str | None,
    split: str,
    limit: int | None,
    tokenizer,
    max_length: int | None,
    chunk_rows: int,
    columns: Columns = Columns(),
) -> tuple[ArraySource, Examples, int]:
    """Load and tokenize a split; return its rows, the examples and the max length used.

    `columns` names a table's text / pair / label columns, as `hskcache build` takes them.
    """
    ex = load_split(data, task, split, columns, limit)
    max_length = max_length or ex.task.max_length
    enc = tokenize(tokenizer, ex, max_length)
    arrays = {
        "input_ids": enc.input_ids,
        "token_type_ids": enc.token_type_ids,
        "lengths": enc.lengths,
        "labels": ex.labels,
    }
    return ArraySource(arrays, chunk_rows), ex, max_length


INPUT_FIELDS = ["input_ids", "token_type_ids", "lengths", "labels"]


def labelled_rows(cache, chunk_rows: int) -> ArraySource:
    """A cache's labelled rows alone, in memory (token inputs and labels: about 130 bytes a row
    at 64 tokens), for the CE-only arm: batches of gold labels only, as a fine-tune on the
    labelled subset would see them, not batches thinned by rows CE skips."""
    rows = cache.read(0, cache.num_examples, INPUT_FIELDS)
    keep = labelled_mask(rows["labels"])
    return ArraySource({k: np.ascontiguousarray(v[keep]) for k, v in rows.items()}, chunk_rows)
