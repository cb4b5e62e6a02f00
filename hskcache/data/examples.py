"""A task split as `Examples` (parallel lists of texts and pair texts, a label array, a
fingerprint of the raw rows), and how raw rows become them: columns resolved by name or position,
labels encoded in the task's class order, every bad row refused naming where it is. A row may be
unlabelled: it carries `NO_LABEL` (classification) or NaN (regression), which the distillation
losses read as "teacher targets only" (docs/cache-format.md).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

import numpy as np

from hskcache.errors import DataFormatError
from hskcache.tasks import TaskSpec

NO_LABEL = -1  # an unlabelled classification row (GLUE test splits ship without labels)
# An unlabelled regression row: NaN, since -1 is a valid regression target.


def labelled_mask(labels: np.ndarray) -> np.ndarray:
    """(N,) True where a row has a gold label: not the sentinel of its dtype (NaN for float
    regression labels, NO_LABEL for integer class ids)."""
    if np.issubdtype(labels.dtype, np.floating):
        return ~np.isnan(labels)
    return labels != NO_LABEL


@dataclass
class Examples:
    texts: list[str]
    pairs: list[str] | None
    labels: np.ndarray  # (N,) int64 class ids, or float32 for regression
    source: str
    task: TaskSpec
    label_names: tuple[str, ...] | None  # the raw label of each class id; None: regression
    # what a saved model calls each class id (`config.id2label`); None: nothing better known
    # than the raw labels' digits (HF then says LABEL_0, LABEL_1, ...)
    class_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def task_agnostic(self) -> bool:
        """No class is known (unlabelled rows, no --task): the rows can carry HSK only."""
        return self.label_names == ()

    def num_unlabelled(self) -> int:
        return int((~labelled_mask(self.labels)).sum())

    def with_labelled(self, n: int) -> Examples:
        """A copy whose rows from `n` on are unlabelled (`--labelled N`)."""
        labels = self.labels.copy()
        labels[n:] = np.nan if self.label_names is None else NO_LABEL
        return Examples(self.texts, self.pairs, labels, self.source, self.task, self.label_names)

    def fingerprint(self) -> str:
        """sha256 over every raw row, in order: the data part of a cache's identity."""
        h = hashlib.sha256()
        for i, text in enumerate(self.texts):
            pair = self.pairs[i] if self.pairs is not None else ""
            h.update(f"{text}\x1f{pair}\x1f{self.labels[i]!r}\x1e".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class Columns:
    """Column overrides for tables that are not standard GLUE files."""

    text: str | None = None
    text_pair: str | None = None
    label: str | None = None


def _column_index(key: str | int, header: list[str] | None, where: str) -> int:
    if isinstance(key, int):
        return key
    if header is None or key not in header:
        raise DataFormatError(where, f"no column '{key}'; columns are {header}")
    return header.index(key)


def from_rows(rows, header, spec, columns, where, numbered=True) -> Examples:
    text_i = _column_index(columns.text or spec.text, header, where)
    pair_key = columns.text_pair or spec.text_pair
    pair_i = None if pair_key is None else _column_index(pair_key, header, where)
    label_key = columns.label or spec.label
    # A header without the label column: unlabelled rows (a test split, extra in-domain text),
    # unless --label-column named it.
    has_label = header is None or label_key in header or columns.label is not None
    label_i = _column_index(label_key, header, where) if has_label else None
    need = max(i for i in (text_i, pair_i, label_i) if i is not None)
    texts, pairs, raw, lines = [], [] if pair_i is not None else None, [], []
    # A TSV row is named by its file line; a parsed table's by its 1-based data row.
    first_line = 2 if header is not None and numbered else 1
    for n, row in enumerate(rows):
        if not row:
            continue
        at = Row(where, first_line + n, numbered)
        if len(row) <= need:
            raise at.error(f"expected at least {need + 1} fields")
        texts.append(_text(row, text_i, header, at))
        if pairs is not None:
            pairs.append(_text(row, pair_i, header, at))
        raw.append(row[label_i] if label_i is not None else None)
        lines.append(at)
    labels, names = encode_labels(raw, spec, lines)
    return Examples(texts, pairs, labels, where, spec, names, class_names(spec, names))


def class_names(spec: TaskSpec, names: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """What a saved model calls each class: the GLUE task's names, else the data's own labels
    unless they are only digits (a `0`/`1` column names nothing)."""
    if names is None:
        return None
    if spec.class_names is not None:
        return spec.class_names
    return None if all(n.lstrip("-").isdigit() for n in names) else names


@dataclass(frozen=True)
class Row:
    """Where a row is, for errors: a line of a TSV, or the n-th data row of a parsed table."""

    path: str
    n: int
    numbered: bool  # True: `n` is a file line

    def error(self, message: str) -> DataFormatError:
        if self.numbered:
            return DataFormatError(self.path, message, self.n)
        return DataFormatError(self.path, f"row {self.n}: {message}")


def _text(row: list, i: int, header: list[str] | None, at: Row) -> str:
    """A text field, refused unless it is a string (a table can hold numbers and nulls)."""
    value = row[i]
    if isinstance(value, str):
        return value
    name = f"'{header[i]}'" if header is not None else str(i)
    if value is None:
        raise at.error(f"text column {name} is empty (null); fill or drop the row")
    raise at.error(
        f"text column {name} holds {type(value).__name__} {value!r}, not text; "
        "pick the text column with --text-column"
    )


def named_columns(spec: TaskSpec) -> TaskSpec:
    """Tables always have headers: positional GLUE columns (CoLA) become the hub's names."""
    if isinstance(spec.text, int):
        return replace(spec, text="sentence", text_pair=None, label="label", has_header=True)
    return spec


def encode_labels(
    raw: list, spec: TaskSpec, rows: list[Row]
) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Class names -> ids in the task's order; a custom task takes its names sorted.

    A missing (null) or non-finite label is refused naming its row: NaN regression targets
    train NaN weights, and a null would become a class named 'None'.
    """
    if all(v is None for v in raw):  # unlabelled rows
        if spec.labels is None:
            return np.full(len(raw), np.nan, dtype=np.float32), None
        return np.full(len(raw), NO_LABEL, dtype=np.int64), spec.labels
    for v, at in zip(raw, rows, strict=True):
        if v is None or v == "":
            raise at.error("label is empty; fill or drop the row")
    if spec.labels is None:
        out = np.empty(len(raw), dtype=np.float32)
        for i, (v, at) in enumerate(zip(raw, rows, strict=True)):
            try:
                out[i] = float(v)
            except (TypeError, ValueError) as e:
                raise at.error(f"regression label {v!r} is not a number") from e
            if not math.isfinite(out[i]):
                raise at.error(f"regression label {v!r} is not a finite number")
        return out, None
    for v, at in zip(raw, rows, strict=True):
        if isinstance(v, float) and not math.isfinite(v):
            raise at.error(f"label {v!r} is not a finite number")
    names = spec.labels or tuple(sorted({str(v) for v in raw}))
    index = {n: i for i, n in enumerate(names)}
    out = np.empty(len(raw), dtype=np.int64)
    for i, (v, at) in enumerate(zip(raw, rows, strict=True)):
        key = str(int(v)) if isinstance(v, (int, np.integer, bool)) else str(v)
        if key not in index:
            raise at.error(f"label {v!r} is not one of {list(names)}")
        out[i] = index[key]
    return out, names
