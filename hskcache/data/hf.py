"""Rows from the `datasets` library as `Examples`: a folder `save_to_disk` wrote, an in-memory
`Dataset` / `DatasetDict`, or a hub dataset. `datasets` is imported only for these inputs (about
a second that GLUE and table inputs do not pay)."""

from __future__ import annotations

from abc import ABC
from dataclasses import replace
from pathlib import Path

import numpy as np

from hskcache.data.examples import Columns, Examples, Row, class_names, from_rows, named_columns
from hskcache.errors import DataFormatError
from hskcache.tasks import TaskSpec

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


def load_from_disk(path: Path):
    # lazy: `datasets` takes about a second to import; only its own inputs need it
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many types for a damaged folder
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataFormatError(
            str(path), f"cannot read as a datasets save_to_disk folder ({msg})"
        ) from e


def _hub_split(spec: TaskSpec, split: str) -> str:
    """A split as the hub's datasets name it: `dev` is `validation`, MNLI's are `_matched`."""
    name = {"dev": "validation"}.get(split, split)
    if spec.name == "mnli" and name in ("validation", "test"):
        name += "_matched"
    return name


def _dataset_split(data, spec: TaskSpec, split: str, where: str):
    """The split of a `DatasetDict` named as the hub names it; a `Dataset` is its own split."""
    if type(data).__name__ != "DatasetDict":
        return data, where
    name = _hub_split(spec, split)
    if name not in data:
        raise DataFormatError(
            where, f"no split '{name}'; the DatasetDict holds {list(data)}; choose one with --split"
        )
    return data[name], f"{where}:{name}"


def from_dataset(data, spec: TaskSpec, columns: Columns, split: str, where: str) -> Examples:
    """Rows of a `datasets.Dataset` (or a `DatasetDict`'s split), columns resolved as a table's.

    A `ClassLabel` label column holds class ids: they are the task's ids for a GLUE task (as
    the hub's GLUE stores them), else the feature's own classes, and its names become the
    class names; -1 is a row without a label.
    """
    import datasets

    ds, where = _dataset_split(data, spec, split, where)
    spec = named_columns(spec)
    header = list(ds.column_names)
    feature = ds.features.get(columns.label or spec.label)
    cols = ds.with_format(None)[:]  # every row as lists, whatever format the user set
    rows = [list(r) for r in zip(*(cols[c] for c in header), strict=True)]
    if not isinstance(feature, datasets.ClassLabel):
        return from_rows(rows, header, spec, columns, where, numbered=False)
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
            raise Row(where, n + 1, False).error(
                f"class id {v} is outside the label column's {feature.num_classes} classes"
            )
        row[label_i] = None if v is None or v == -1 else spec.labels[v]
    return replace(
        from_rows(rows, header, spec, columns, where, numbered=False),
        class_names=tuple(feature.names),
    )


def from_hub(name: str, spec: TaskSpec, columns: Columns, split: str) -> Examples:
    # lazy: `datasets` takes about a second to import; only hub inputs need it
    import datasets

    repo = "nyu-mll/glue" if name == "glue" else name
    hub_split = _hub_split(spec, split)
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
        raise Row(source, int(bad[0]) + 1, False).error(
            f"label {labels[bad[0]]} is not a finite number"
        )
    pairs = list(ds[pair]) if pair is not None else None
    feature = ds.features[label]
    names = tuple(feature.names) if hasattr(feature, "names") else class_names(spec, spec.labels)
    return Examples(list(ds[text]), pairs, labels, source, spec, spec.labels, names)


def _first(cols: list[str], candidates: tuple[str, ...]) -> str | None:
    return next((c for c in candidates if c in cols), None)
