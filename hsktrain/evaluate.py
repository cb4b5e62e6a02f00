"""Prediction and GLUE metrics over a split: used after every epoch and by `hsktrain eval`."""

from __future__ import annotations

import numpy as np
import torch

from hskcache.errors import DataFormatError
from hsktrain.batch import inputs
from hsktrain.loader import ArraySource, ChunkShuffleLoader
from hsktrain.metrics import task_metrics


@torch.no_grad()
def predict(model, rows: ArraySource, regression: bool, batch_size: int, device: str):
    """Logits of every row, in order: (N, C). The model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    loader = ChunkShuffleLoader(rows, batch_size, shuffle=False)
    out = []
    for r in loader.iterate(0):
        b = inputs(r, device, regression)
        out.append(model(**b.model_inputs(model)).logits.float().cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


def predict_metrics(
    model, rows: ArraySource, task: str, regression: bool, batch_size: int, device: str
) -> dict[str, float]:
    labels = rows.arrays["labels"]
    if not regression and (labels < 0).any():
        raise DataFormatError(
            "eval data",
            "rows without labels (a test split?) cannot be scored; evaluate a dev split",
        )
    logits = predict(model, rows, regression, batch_size, device)
    preds = logits[:, 0] if regression else np.argmax(logits, axis=-1)
    return task_metrics(task, preds, labels)


def evaluate_checkpoint(
    model_dir: str,
    data: str,
    task: str | None,
    split: str,
    limit: int | None,
    max_length: int | None,
    batch_size: int,
    device: str,
) -> dict:
    """Load a saved model folder and score it on a split."""
    import json
    from pathlib import Path

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hskcache.errors import TeacherError
    from hsktrain.rows import encode_split

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise TeacherError(f"{folder}: not a model folder (no config.json); pass RUN/best")
    record = folder / "hsktrain.json"
    if max_length is None and record.is_file():
        max_length = json.loads(record.read_text()).get("max_length")
    tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True)
    model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True)
    model.to(device)
    rows, ex, _ = encode_split(data, task, split, limit, tokenizer, max_length, 1024)
    regression = ex.label_names is None
    metrics = predict_metrics(model, rows, ex.task.name, regression, batch_size, device)
    return {
        "model": str(folder),
        "task": ex.task.name,
        "split": split,
        "examples": len(ex),
        "metrics": metrics,
    }
