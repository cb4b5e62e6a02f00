"""GLUE metrics via scikit-learn and SciPy, and which one picks the best checkpoint."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

# The metric that ranks checkpoints, per task (GLUE's headline metric).
MAIN_METRIC = {"cola": "matthews", "mrpc": "f1", "qqp": "f1", "stsb": "pearson"}


def task_metrics(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Metrics of one task: predictions are class ids, or scores for regression (STS-B)."""
    if task == "stsb":
        return {
            "pearson": float(pearsonr(predictions, labels)[0]),
            "spearman": float(spearmanr(predictions, labels)[0]),
        }
    out = {"accuracy": float(accuracy_score(labels, predictions))}
    if task in ("mrpc", "qqp"):
        out["f1"] = float(f1_score(labels, predictions))
    if task == "cola":
        out["matthews"] = float(matthews_corrcoef(labels, predictions))
    return out


def main_metric(task: str) -> str:
    return MAIN_METRIC.get(task, "accuracy")
