"""Prediction and GLUE metrics over a split: used after every epoch and by `hsktrain eval`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from hskcache.data import Columns, HFDataset, labelled_mask
from hskcache.devices import check_device
from hskcache.errors import ConfigError, DataFormatError, TeacherError
from hskcache.teacher import check_model_folder, check_token_limit
from hsktrain.batch import inputs
from hsktrain.checkpoint import refuse_run_folder
from hsktrain.loader import ArraySource, ChunkShuffleLoader
from hsktrain.metrics import learned_nothing, one_answer_scores, task_metrics
from hsktrain.rows import encode_split
from hsktrain.students import check_vocab


@torch.no_grad()
def predict(
    model,
    rows: ArraySource,
    regression: bool,
    batch_size: int,
    device: str,
    advance: Callable[[int], None] = lambda n: None,
):
    """Logits of every row, in order: (N, C). The model's train/eval mode is restored;
    `advance(rows)` is called after each batch (a progress bar)."""
    was_training = model.training
    model.eval()
    loader = ChunkShuffleLoader(rows, batch_size, shuffle=False)
    out = []
    for r in loader.iterate(0):
        b = inputs(r, device, regression)
        out.append(model(**b.model_inputs(model)).logits.float().cpu())
        advance(len(r["lengths"]))
    model.train(was_training)
    return torch.cat(out).numpy()


def predict_metrics(
    model, rows: ArraySource, task: str, regression: bool, batch_size: int, device: str
) -> dict[str, float]:
    labels = rows.arrays["labels"]
    if not labelled_mask(labels).all():  # -1 (NaN for regression): no gold label
        raise DataFormatError(
            "eval data",
            "rows without labels (a test split?) cannot be scored; evaluate a dev split",
        )
    logits = predict(model, rows, regression, batch_size, device)
    preds = logits[:, 0] if regression else np.argmax(logits, axis=-1)
    return task_metrics(task, preds, labels, regression)


def evaluate_checkpoint(
    model_dir: str,
    data: str | HFDataset,
    task: str | None,
    split: str,
    limit: int | None,
    max_length: int | None,
    batch_size: int,
    device: str,
    columns: Columns = Columns(),
) -> dict:
    """Load a saved model folder and score it on a split.

    Every setting is checked before the data is tokenized or the weights are loaded.

    Raises:
        TeacherError: not a safetensors model folder (with a hint for a run folder), custom
            code, fewer token embeddings than the tokenizer has tokens, or a label count that
            does not match the task.
        ConfigError: batch size, limit, max length or device out of range.
        DataFormatError: the data cannot be read as asked.
    """
    # lazy: transformers takes seconds to import; commands that load no model skip it
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(model_dir)
    refuse_run_folder(folder)
    check_model_folder(folder)
    if batch_size < 1:
        raise ConfigError(f"batch size {batch_size} must be >= 1")
    check_device(device)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    record = folder / "hsktrain.json"
    if max_length is None and record.is_file():
        max_length = json.loads(record.read_text()).get("max_length")
    if max_length is not None:
        check_token_limit(config, max_length)
    tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True, trust_remote_code=False)
    check_vocab(config, tokenizer, str(folder))
    rows, ex, max_length = encode_split(
        data, task, split, limit, tokenizer, max_length, 1024, columns
    )
    check_token_limit(config, max_length)  # the task's default, too
    num_labels = 1 if ex.label_names is None else len(ex.label_names)
    if config.num_labels != num_labels:
        raise TeacherError(
            f"{folder}: model has {config.num_labels} output label(s), task "
            f"'{ex.task.name}' has {num_labels}; evaluate it on the task it was trained for"
        )
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, use_safetensors=True, trust_remote_code=False
    )
    model.to(device)
    regression = ex.label_names is None
    metrics = predict_metrics(model, rows, ex.task.name, regression, batch_size, device)
    floor = one_answer_scores(ex.task.name, rows.arrays["labels"])
    return {
        "model": str(folder),
        "task": ex.task.name,
        "split": split,
        "examples": len(ex),
        "metrics": metrics,
        "one_answer": floor,  # each metric's best from one class for every row: the floor
        "warning": learned_nothing(ex.task.name, metrics, floor) or "",
    }
