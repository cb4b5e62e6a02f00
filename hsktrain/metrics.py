"""GLUE metrics via scikit-learn and SciPy, and which one picks the best checkpoint."""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

# Every metric a run can score (a study table's dev_<metric> columns).
METRICS = ("accuracy", "f1", "matthews", "pearson", "spearman")
# The metric that ranks checkpoints, per task (GLUE's headline metric).
MAIN_METRIC = {"cola": "matthews", "mrpc": "f1", "qqp": "f1", "stsb": "pearson"}
# A model this close to answering one class for every row (or under it) learned the label prior,
# not the task: 1 point is 4 rows of MRPC's 408-row dev split.
ONE_ANSWER_MARGIN = 0.01


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


def one_answer_scores(task: str, labels: np.ndarray) -> dict[str, float]:
    """Each metric's best score from answering one class for every row (accuracy: the majority
    class; MRPC's F1: always "equivalent"): the floor a classifier must clear to have learned
    anything. Empty for regression (float labels, or STS-B), which has no classes."""
    if task == "stsb" or np.issubdtype(labels.dtype, np.floating):
        return {}
    best: dict[str, float] = {}
    with warnings.catch_warnings():  # one answer: precision or MCC undefined, scored 0
        warnings.simplefilter("ignore")
        for c in np.unique(labels):
            for k, v in task_metrics(task, np.full_like(labels, c), labels).items():
                best[k] = max(best.get(k, v), v)
    return best


def learned_nothing(task: str, metrics: dict[str, float], floor: dict[str, float]) -> str | None:
    """A warning when no metric `floor` scores (`one_answer_scores`) is more than
    ONE_ANSWER_MARGIN above it; None when one is, or there is no floor (regression). Any metric,
    not the main one alone: on MRPC a model that tells some non-paraphrases apart gains accuracy
    over the majority class while its F1 falls under always answering "equivalent"."""
    main = main_metric(task)
    shared = sorted((m for m in floor if m in metrics), key=lambda m: m != main)
    if not shared or any(metrics[m] > floor[m] + ONE_ANSWER_MARGIN for m in shared):
        return None
    scores = " and ".join(f"{m} {metrics[m]:.4f}" for m in shared)
    return (
        f"dev {scores} {'are' if len(shared) > 1 else 'is'} not {100 * ONE_ANSWER_MARGIN:g} "
        "point above answering one class for every row "
        f"({', '.join(f'{floor[m]:.4f}' for m in shared)}): it learned no more than the label prior"
    )
