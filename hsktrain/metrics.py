"""GLUE metrics via scikit-learn and SciPy, and which one picks the best checkpoint."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

# Every metric a run can score (a study table's dev_<metric> columns).
METRICS = ("accuracy", "f1", "matthews", "pearson", "spearman")
# The metric that ranks checkpoints, per task (GLUE's headline metric).
MAIN_METRIC = {"cola": "matthews", "mrpc": "f1", "qqp": "f1", "stsb": "pearson"}


def task_metrics(
    task: str, predictions: np.ndarray, labels: np.ndarray, regression: bool = False
) -> dict[str, float]:
    """Metrics of one task: predictions are class ids, or scores for regression (STS-B or any
    task whose labels are numbers)."""
    if regression or task == "stsb":
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


def main_metric(task: str, regression: bool = False) -> str:
    """The metric that picks a run's best checkpoint and a study's headline column: the one
    place that chooses it."""
    return "pearson" if regression else MAIN_METRIC.get(task, "accuracy")
