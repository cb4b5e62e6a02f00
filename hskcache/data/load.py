"""`load_split`: one split of a task from whatever the user points at (a GLUE folder, a local
file, a `datasets` folder or object, a hub name), with a row limit."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hskcache.data.examples import Columns, Examples, from_rows
from hskcache.data.files import TABLE_SUFFIXES, TEXT_SUFFIX, from_table, read_tsv
from hskcache.data.hf import (
    SAVED_DATASET,
    SAVED_DATASET_DICT,
    HFDataset,
    from_dataset,
    from_hub,
    load_from_disk,
)
from hskcache.errors import ConfigError, DataFormatError
from hskcache.hub import hub_offline, hub_reachable
from hskcache.tasks import TASKS, TaskSpec, get_task

DataInput = str | HFDataset  # what `load_split` reads: a path or name, or rows in memory


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
        ex = from_dataset(data, spec, columns, split, data_label(data))
        return _limited(ex, limit)
    path = Path(data).expanduser()
    if (path / SAVED_DATASET).is_file() or (path / SAVED_DATASET_DICT).is_file():
        spec = get_task(task) if task else _custom_task(columns)
        ex = from_dataset(load_from_disk(path), spec, columns, split, str(path))
    elif path.is_dir():
        spec = get_task(task) if task else _task_from_folder(path)
        file = path / f"{spec.dev_file if split == 'dev' else split}.tsv"
        if not file.is_file():
            raise DataFormatError(str(file), f"not found; a GLUE folder needs {split}.tsv")
        rows, header = read_tsv(file, spec.has_header)
        ex = from_rows(rows, header, spec, columns, str(file))
    elif path.is_file():
        spec = get_task(task) if task else _custom_task(columns)
        ex = from_table(path, spec, columns)
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
        ex = from_hub(data, spec, columns, split)
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
