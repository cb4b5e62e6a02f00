"""`hsktrain predict MODEL --data TABLE_OR_TEXT --out OUT.jsonl|OUT.csv`: score rows with a saved
model and write one record a row: the class name (`id2label`), its id and every class's
probability, or the score of a regression model.

Rows come from anything `eval` reads (GLUE folder, table, `save_to_disk` folder, columns resolved
the same way; no label column needed) or from a plain text file, one text a line. They are
tokenized and scored a block at a time, so memory stays bounded whatever the file's size, and
written to a temporary file renamed onto --out at the end: a failed run leaves no half file.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from hskcache.data import (
    NO_LABEL,
    TABLE_SUFFIXES,
    Columns,
    DataInput,
    Examples,
    load_split,
    utf8_text,
)
from hskcache.errors import ConfigError, DataFormatError
from hskcache.progress import progress_bar
from hskcache.tasks import TASKS, TaskSpec
from hskcache.tokenize import tokenize
from hsktrain.evaluate import predict
from hsktrain.loader import ArraySource
from hsktrain.outputs import new_output_file
from hsktrain.saved import SavedModel, load_saved

FORMATS = (".jsonl", ".csv")
BLOCK_ROWS = 4096  # rows tokenized and scored at once: (4096, 128) int32 ids are 2 MiB


@dataclass(frozen=True)
class PredictReport:
    out: Path
    rows: int
    source: str
    labels: tuple[str, ...] | None  # class names, in id order; None: a regression model


def predict_file(
    model_dir: str | Path,
    data: DataInput,
    out: str | Path,
    task: str | None = None,
    split: str = "dev",
    columns: Columns = Columns(),
    limit: int | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    show_progress: bool = True,
) -> PredictReport:
    """Score every row of `data` with a saved model and write the records to `out`.

    Args:
        model_dir: a model folder (`RUN/best`, a fine-tuned teacher).
        data: what `load_split` reads, or a text file (any suffix but a table's): one text a
            line, blank lines skipped.
        out: `.jsonl` or `.csv`.
        task: the GLUE task whose columns the table has; default the one the model's run
            trained on, when hsktrain wrote it.
        split, columns, limit: as `hsktrain eval`.
        batch_size, max_length, device: how the model runs (max length: the run's, else 128).
        overwrite: replace an existing `out`.
        show_progress: draw a progress bar.

    Raises:
        ConfigError: `out` exists (without `overwrite`), has another suffix, cannot be
            written; a bad batch size, limit, max length or device.
        TeacherError: not a loadable model folder.
        DataFormatError: the rows cannot be read as asked.
    """
    path = new_output_file(out, "--out", overwrite)
    if path.suffix not in FORMATS:
        raise ConfigError(f"{path}: --out must end in {' or '.join(FORMATS)}")
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} must be >= 1")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit {limit} must be >= 1 (it keeps the first N rows)")
    saved = load_saved(model_dir, device, max_length)
    if task is None and saved.task in TASKS:
        task = saved.task
    ex = _rows(data, task, split, columns, limit)
    labels = None if saved.regression else tuple(saved.class_names)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            write = _writer(f, path.suffix, ex.pairs is not None, labels)
            with progress_bar("predict", len(ex), enabled=show_progress) as advance:
                for start in range(0, len(ex), BLOCK_ROWS):
                    block = _block(ex, start, start + BLOCK_ROWS)
                    for record in _score(saved, block, batch_size, device, advance):
                        write(record)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return PredictReport(path, len(ex), ex.source, labels)


def _rows(data, task, split, columns, limit) -> Examples:
    """The rows to score: a text file line by line, else anything `load_split` reads."""
    file = Path(data) if isinstance(data, str) else None
    if file is None or not file.is_file() or file.suffix in TABLE_SUFFIXES:
        return load_split(data, task, split, columns, limit)  # no label column needed
    given = [c for c in ("text", "text_pair", "label") if getattr(columns, c) is not None]
    if given:
        raise ConfigError(
            f"{file}: a text file has no columns (one text a line); drop "
            f"{', '.join('--' + c.replace('_', '-') + '-column' for c in given)}, or give a "
            f"table ({', '.join(sorted(TABLE_SUFFIXES))})"
        )
    texts = [line for line in utf8_text(file).splitlines() if line.strip()][:limit]
    if not texts:
        raise DataFormatError(str(file), "no lines with text to score")
    spec = TaskSpec("text", "text", None, "label", labels=(), max_length=0)
    none = np.full(len(texts), NO_LABEL, dtype=np.int64)
    return Examples(texts, None, none, str(file), spec, label_names=None)


def _block(ex: Examples, start: int, stop: int) -> Examples:
    pairs = ex.pairs[start:stop] if ex.pairs is not None else None
    return replace(ex, texts=ex.texts[start:stop], pairs=pairs, labels=ex.labels[start:stop])


def _score(saved: SavedModel, ex: Examples, batch_size: int, device: str, advance):
    """One record a row of `ex`, in order."""
    enc = tokenize(saved.tokenizer, ex, saved.max_length)
    arrays = {
        "input_ids": enc.input_ids,
        "token_type_ids": enc.token_type_ids,
        "lengths": enc.lengths,
        "labels": np.zeros(len(ex), dtype=np.float32 if saved.regression else np.int64),
    }
    rows = ArraySource(arrays, batch_size)
    logits = predict(saved.model, rows, saved.regression, batch_size, device, advance)
    probs = None if saved.regression else torch.softmax(torch.from_numpy(logits), -1).numpy()
    names = saved.class_names
    for i, text in enumerate(ex.texts):
        record: dict = {"text": text}
        if ex.pairs is not None:
            record["text_pair"] = ex.pairs[i]
        if probs is None:
            record["score"] = float(logits[i, 0])
        else:
            k = int(np.argmax(probs[i]))
            record.update(label=names[k], label_id=k, probabilities=probs[i].tolist())
        yield record


def _writer(f, suffix: str, pair: bool, labels: tuple[str, ...] | None):
    """`write(record)` for JSON lines, or CSV with one `p_<name>` column a class."""
    if suffix == ".jsonl":
        return lambda r: f.write(json.dumps(r, ensure_ascii=False) + "\n")
    head = ["text", *(["text_pair"] if pair else [])]
    head += ["score"] if labels is None else ["label", "label_id", *(f"p_{n}" for n in labels)]
    w = csv.writer(f)
    w.writerow(head)

    def write(r: dict) -> None:
        probs = r.pop("probabilities", [])
        w.writerow([*r.values(), *probs])

    return write
