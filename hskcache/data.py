"""Load a task split from a GLUE folder, a local table (tsv/csv/jsonl/parquet), a plain text
file (one text per line), a `datasets` folder (`save_to_disk`), an in-memory
`datasets.Dataset` / `DatasetDict`, or the HF hub.

Everything becomes `Examples`: parallel lists of texts (and pair texts) plus a label array, with
a sha256 fingerprint of the raw rows so a cache can prove which data it was built from, and the
class names a saved model reports (`config.id2label`) where the data or the task knows them. A
row may be unlabelled (a text file, a table without its label column, rows past `--labelled
N`): it carries the sentinel `NO_LABEL` (classification) or NaN (regression), which the
distillation losses read as "teacher targets only" (docs/cache-format.md).
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import math
from abc import ABC
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hskcache.errors import ConfigError, DataFormatError
from hskcache.hub import hub_offline, hub_reachable
from hskcache.tasks import TASKS, TaskSpec, get_task

TABLE_SUFFIXES = {".tsv", ".csv", ".jsonl", ".json", ".parquet"}
TEXT_SUFFIX = ".txt"  # one text per line, no labels
NO_LABEL = -1  # an unlabelled classification row (GLUE test splits ship without labels)
# An unlabelled regression row: NaN, since -1 is a valid regression target.


def labelled_mask(labels: np.ndarray) -> np.ndarray:
    """(N,) True where a row has a gold label: not the sentinel of its dtype (NaN for float
    regression labels, NO_LABEL for integer class ids)."""
    if np.issubdtype(labels.dtype, np.floating):
        return ~np.isnan(labels)
    return labels != NO_LABEL


# Files `datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk` write at a folder's top.
SAVED_DATASET = "state.json"
SAVED_DATASET_DICT = "dataset_dict.json"


class HFDataset(ABC):  # noqa: B024 (a type test, not an interface)
    """An in-memory `datasets.Dataset` or `DatasetDict` (`isinstance(x, HFDataset)`).

    Checked by class name and module so that configs can name the type without importing
    `datasets` (a second of import that GLUE and table inputs do not pay).
    """

    @classmethod
    def __subclasshook__(cls, sub: type) -> bool:
        return any(
            k.__module__.split(".")[0] == "datasets" and k.__name__ in ("Dataset", "DatasetDict")
            for k in sub.__mro__
        )


DataInput = str | HFDataset  # what `load_split` reads: a path or name, or rows in memory


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


def data_label(data: DataInput | None) -> str | None:
    """How a run's record names its data: the path or name, or `datasets.Dataset (in memory)`."""
    if data is None or isinstance(data, str):
        return data
    return f"{type(data).__name__} (in memory)"


def load_split(
    data: DataInput,
    task: str | None,
    split: str,
    columns: Columns = Columns(),
    limit: int | None = None,
) -> Examples:
    """Load one split.

    Args:
        data: a GLUE-format folder (holding `<split>.tsv`), a table file, a folder written by
            `datasets`' `save_to_disk`, a hub dataset name (`glue` means `nyu-mll/glue`), or an
            in-memory `datasets.Dataset` / `DatasetDict`. A `DatasetDict` gives the split
            named as the hub names it (`dev` is `validation`); a `Dataset` is the split.
        task: GLUE task name; inferred from a GLUE folder's name when None.
        split: `train`, `dev` (alias `validation`) or `test`.
        columns: overrides for the text / pair / label columns.
        limit: keep only the first `limit` rows. A table without its label column (and no
            `columns.label` naming one) loads as unlabelled rows, every label the sentinel.

    Raises:
        DataFormatError: missing file, unknown column, bad label or text, malformed row, a
            file that is not UTF-8.
        ConfigError: a limit below 1, an unknown task.
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"limit {limit} must be >= 1 (it keeps the first N rows)")
    split = "dev" if split == "validation" else split
    if not isinstance(data, str):
        if not isinstance(data, HFDataset):
            raise ConfigError(
                f"data must be a path, a hub name or a datasets.Dataset / DatasetDict, not "
                f"{type(data).__name__}"
            )
        spec = get_task(task) if task else _custom_task(columns)
        ex = _from_dataset(data, spec, columns, split, data_label(data))
        return _limited(ex, limit)
    path = Path(data).expanduser()
    if (path / SAVED_DATASET).is_file() or (path / SAVED_DATASET_DICT).is_file():
        spec = get_task(task) if task else _custom_task(columns)
        ex = _from_dataset(_load_from_disk(path), spec, columns, split, str(path))
    elif path.is_dir():
        spec = get_task(task) if task else _task_from_folder(path)
        file = path / f"{spec.dev_file if split == 'dev' else split}.tsv"
        if not file.is_file():
            raise DataFormatError(str(file), f"not found; a GLUE folder needs {split}.tsv")
        rows, header = _read_tsv(file, spec.has_header)
        ex = _from_rows(rows, header, spec, columns, str(file))
    elif path.is_file():
        spec = get_task(task) if task else _custom_task(columns)
        ex = _from_table(path, spec, columns)
    elif path.suffix in {*TABLE_SUFFIXES, TEXT_SUFFIX} or "/" in data or data.startswith("."):
        raise DataFormatError(data, "no such file or folder; pass a GLUE folder or a table file")
    elif not hub_offline() and not hub_reachable():
        raise DataFormatError(
            data,
            "no such file or folder, and the Hugging Face hub is unreachable to load it as a "
            "dataset name; check the path",
        )
    else:
        spec = get_task(task) if task else _custom_task(columns)
        ex = _from_hub(data, spec, columns, split)
    return _limited(ex, limit)


def _limited(ex: Examples, limit: int | None) -> Examples:
    """The first `limit` rows (all when None); no rows at all is refused."""
    if limit is not None:
        ex = replace(
            ex,
            texts=ex.texts[:limit],
            pairs=ex.pairs[:limit] if ex.pairs is not None else None,
            labels=ex.labels[:limit],
        )
    if len(ex) == 0:
        raise DataFormatError(ex.source, "no rows to load")
    return ex


def _task_from_folder(path: Path) -> TaskSpec:
    """A GLUE folder's task from its name (SST-2, MRPC, ...), by `get_task`'s own aliases."""
    try:
        return get_task(path.name)
    except ConfigError as e:
        raise ConfigError(
            f"{path}: cannot tell the GLUE task from the folder name '{path.name}'; "
            f"pass --task (one of {', '.join(TASKS)})"
        ) from e


def _custom_task(columns: Columns) -> TaskSpec:
    return TaskSpec(
        "custom",
        columns.text or "text",
        columns.text_pair,
        columns.label or "label",
        labels=(),  # filled from the data
        max_length=128,
    )


def utf8_text(file: Path) -> str:
    """The file's text, without a BOM (MRPC has one); a non-UTF-8 byte names its line."""
    raw = file.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataFormatError(
            str(file), f"not UTF-8 (byte 0x{raw[e.start]:02x}); re-save the file as UTF-8", line
        ) from e


def _read_tsv(file: Path, has_header: bool) -> tuple[list[list[str]], list[str] | None]:
    # GLUE TSVs contain bare quotes (MRPC, SST-2): no quoting.
    text = io.StringIO(utf8_text(file), newline="")
    reader = csv.reader(text, delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        rows = list(reader)
    except csv.Error as e:  # a field over csv.field_size_limit(): no sentence is that long
        raise DataFormatError(
            str(file),
            f"a field is longer than {csv.field_size_limit():,} characters (the csv module's "
            f"limit; {e}); is this really a TSV of sentences?",
            reader.line_num,
        ) from e
    if not has_header:
        return rows, None
    if not rows:
        raise DataFormatError(str(file), "empty file")
    return rows[1:], rows[0]


def _column_index(key: str | int, header: list[str] | None, where: str) -> int:
    if isinstance(key, int):
        return key
    if header is None or key not in header:
        raise DataFormatError(where, f"no column '{key}'; columns are {header}")
    return header.index(key)


def _from_rows(rows, header, spec, columns, where, numbered=True) -> Examples:
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
        at = _Row(where, first_line + n, numbered)
        if len(row) <= need:
            raise at.error(f"expected at least {need + 1} fields")
        texts.append(_text(row, text_i, header, at))
        if pairs is not None:
            pairs.append(_text(row, pair_i, header, at))
        raw.append(row[label_i] if label_i is not None else None)
        lines.append(at)
    labels, names = _encode_labels(raw, spec, lines)
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
class _Row:
    """Where a row is, for errors: a line of a TSV, or the n-th data row of a parsed table."""

    path: str
    n: int
    numbered: bool  # True: `n` is a file line

    def error(self, message: str) -> DataFormatError:
        if self.numbered:
            return DataFormatError(self.path, message, self.n)
        return DataFormatError(self.path, f"row {self.n}: {message}")


def _text(row: list, i: int, header: list[str] | None, at: _Row) -> str:
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


def _from_text(path: Path, spec: TaskSpec, columns: Columns) -> Examples:
    """A plain text file: every non-blank line is one unlabelled text (blank lines are skipped:
    they separate paragraphs, they are not rows)."""
    if spec.text_pair is not None or columns.text_pair is not None:
        raise DataFormatError(
            str(path),
            f"a text file holds one text per line, and task '{spec.name}' takes sentence pairs; "
            "give the pairs as a table (tsv/csv/jsonl/parquet) with two text columns",
        )
    if columns.text is not None or columns.label is not None:
        raise DataFormatError(
            str(path), "a text file has no columns; drop --text-column / --label-column"
        )
    texts = [line for line in utf8_text(path).splitlines() if line.strip()]
    labels, names = _encode_labels([None] * len(texts), spec, [])
    return Examples(texts, None, labels, str(path), spec, names)


def _from_table(path: Path, spec: TaskSpec, columns: Columns) -> Examples:
    if path.suffix == TEXT_SUFFIX:
        return _from_text(path, spec, columns)
    if path.suffix == ".tsv" and spec.name != "custom":
        rows, header = _read_tsv(path, spec.has_header)
        return _from_rows(rows, header, spec, columns, str(path))
    # lazy: pyarrow only for csv/jsonl/parquet inputs (GLUE TSVs are read without it)
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    if path.suffix in (".csv", ".tsv", ".jsonl", ".json"):
        utf8_text(path)  # pyarrow's own error names no line, and its JSON reader lets bad bytes in
    try:
        if path.suffix in (".csv", ".tsv"):
            opts = pacsv.ParseOptions(delimiter="\t" if path.suffix == ".tsv" else ",")
            # In a CSV everything is text: keep `5` a sentence, not an int.
            text_cols = (columns.text or spec.text, columns.text_pair or spec.text_pair)
            strings = pacsv.ConvertOptions(
                column_types={c: pa.string() for c in text_cols if isinstance(c, str)}
            )
            table = pacsv.read_csv(path, parse_options=opts, convert_options=strings)
        elif path.suffix in (".jsonl", ".json"):
            table = pajson.read_json(path)
        elif path.suffix == ".parquet":
            table = pq.read_table(path)
        else:
            raise DataFormatError(str(path), f"unknown table type; use one of {TABLE_SUFFIXES}")
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise DataFormatError(str(path), f"cannot parse: {str(e).splitlines()[0]}") from e
    header = table.column_names
    rows = [list(r) for r in zip(*(table.column(c).to_pylist() for c in header), strict=True)]
    spec = _named_columns(spec)
    return _from_rows(rows, header, spec, columns, str(path), numbered=False)


def _named_columns(spec: TaskSpec) -> TaskSpec:
    """Tables always have headers: positional GLUE columns (CoLA) become the hub's names."""
    if isinstance(spec.text, int):
        return replace(spec, text="sentence", text_pair=None, label="label", has_header=True)
    return spec


def _load_from_disk(path: Path):
    # lazy: `datasets` takes about a second to import; only its own inputs need it
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many types for a damaged folder
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataFormatError(
            str(path), f"cannot read as a datasets save_to_disk folder ({msg})"
        ) from e


def _dataset_split(data, spec: TaskSpec, split: str, where: str):
    """The split of a `DatasetDict` named as the hub names it; a `Dataset` is its own split."""
    if type(data).__name__ != "DatasetDict":
        return data, where
    name = {"dev": "validation"}.get(split, split)
    if spec.name == "mnli" and name in ("validation", "test"):
        name += "_matched"
    if name not in data:
        raise DataFormatError(
            where, f"no split '{name}'; the DatasetDict holds {list(data)}; choose one with --split"
        )
    return data[name], f"{where}:{name}"


def _from_dataset(data, spec: TaskSpec, columns: Columns, split: str, where: str) -> Examples:
    """Rows of a `datasets.Dataset` (or a `DatasetDict`'s split), columns resolved as a table's.

    A `ClassLabel` label column holds class ids: they are the task's ids for a GLUE task (as
    the hub's GLUE stores them), else the feature's own classes, and its names become the
    class names; -1 is a row without a label.
    """
    import datasets

    ds, where = _dataset_split(data, spec, split, where)
    spec = _named_columns(spec)
    header = list(ds.column_names)
    feature = ds.features.get(columns.label or spec.label)
    cols = ds.with_format(None)[:]  # every row as lists, whatever format the user set
    rows = [list(r) for r in zip(*(cols[c] for c in header), strict=True)]
    if not isinstance(feature, datasets.ClassLabel):
        return _from_rows(rows, header, spec, columns, where, numbered=False)
    if spec.name == "custom":
        spec = replace(spec, labels=tuple(feature.names))
    elif spec.num_labels != feature.num_classes:
        raise DataFormatError(
            where,
            f"label column has {feature.num_classes} classes {feature.names}, task "
            f"'{spec.name}' has {spec.num_labels}; pass the task these rows are for",
        )
    label_i = header.index(columns.label or spec.label)
    for n, row in enumerate(rows):
        v = row[label_i]
        if v is not None and not -1 <= v < feature.num_classes:
            raise _Row(where, n + 1, False).error(
                f"class id {v} is outside the label column's {feature.num_classes} classes"
            )
        row[label_i] = None if v is None or v == -1 else spec.labels[v]
    return replace(
        _from_rows(rows, header, spec, columns, where, numbered=False),
        class_names=tuple(feature.names),
    )


def _from_hub(name: str, spec: TaskSpec, columns: Columns, split: str) -> Examples:
    # lazy: `datasets` takes about a second to import; only hub inputs need it
    import datasets

    repo = "nyu-mll/glue" if name == "glue" else name
    hub_split = {"dev": "validation"}.get(split, split)
    if spec.name == "mnli" and hub_split in ("validation", "test"):
        hub_split += "_matched"
    try:
        ds = datasets.load_dataset(repo, spec.hf_name or None, split=hub_split)
    except Exception as e:  # the hub raises many types; all mean "cannot load"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataFormatError(name, f"cannot load from the Hugging Face hub ({msg})") from e
    cols, source = ds.column_names, f"hf:{repo}/{spec.hf_name}:{hub_split}"
    text = columns.text or _first(cols, ("sentence", "sentence1", "question1", "question"))
    pair = columns.text_pair
    if pair is None and spec.text_pair is not None:
        pair = _first([c for c in cols if c != text], ("sentence2", "question2", "sentence"))
    label = columns.label or "label"
    for c in (text, pair, label):
        if c is not None and c not in cols:
            raise DataFormatError(source, f"no column '{c}'; columns are {cols}")
    # The hub stores class ids already (-1 on test splits), in the same order as TaskSpec.labels.
    labels = np.asarray(ds[label], dtype=np.float32 if spec.is_regression else np.int64)
    bad = np.flatnonzero(~np.isfinite(labels))
    if bad.size:
        raise _Row(source, int(bad[0]) + 1, False).error(
            f"label {labels[bad[0]]} is not a finite number"
        )
    pairs = list(ds[pair]) if pair is not None else None
    feature = ds.features[label]
    names = tuple(feature.names) if hasattr(feature, "names") else class_names(spec, spec.labels)
    return Examples(list(ds[text]), pairs, labels, source, spec, spec.labels, names)


def _first(cols: list[str], candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in cols), None)


def _encode_labels(
    raw: list, spec: TaskSpec, rows: list[_Row]
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
