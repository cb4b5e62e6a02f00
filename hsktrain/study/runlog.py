"""How a study run learned, read back from its metrics.jsonl: the best epoch as `fit` chose it
and the fields of logs.csv (how near the student started and got, its dev curve), so a report
can say why a target was missed from the runs' own logs."""

from __future__ import annotations

from pathlib import Path

from hsktrain.metrics import main_metric
from hsktrain.train import METRICS_LOG, read_metrics


def read_log(out: Path) -> list[dict]:
    """The metrics.jsonl records of the run in `out` (none when it is missing)."""
    return read_metrics(out) if (out / METRICS_LOG).is_file() else []


def best_epoch(log: list[dict], task: str) -> tuple[str | None, int | None]:
    """(stage, 1-based epoch in it) of the best dev score, chosen as `fit` chooses: the first
    epoch with the highest main metric, HSK-stage epochs excluded."""
    metric = main_metric(task)
    best = (None, None, None)
    for r in log:
        if "dev" in r and r["stage"] != "hsk" and (best[0] is None or r["dev"][metric] > best[0]):
            best = (r["dev"][metric], r["stage"], r["epoch"] + 1)
    return best[1], best[2]


def log_summary(log: list[dict], task: str) -> dict:
    """How a run learned, for logs.csv: its HSK loss as a share of an all-zero prediction's at
    the first step (`hsk_start`: how near the student starts) and over the HSK stage's last
    epoch (`hsk_end`: how near it got), the main dev metric after each scored epoch
    (`dev_curve`, space-separated: still rising at the end means it wanted more), and the last
    epoch's mean train loss (`train_end`). A field the log cannot give is None."""
    steps = [r for r in log if r.get("stage") == "hsk" and "zero_loss" in r and "loss" in r]
    ends = [r for r in log if r.get("stage") == "hsk" and "zero_loss" in r and "train_loss" in r]
    epochs = [r for r in log if "train_loss" in r]
    metric = main_metric(task)
    dev = [r["dev"][metric] for r in epochs if r["stage"] != "hsk" and metric in r.get("dev", {})]
    share = lambda r, k: r[k] / r["zero_loss"] if r["zero_loss"] else None  # noqa: E731
    return {
        "hsk_start": share(steps[0], "loss") if steps else None,
        "hsk_end": share(ends[-1], "train_loss") if ends else None,
        "dev_curve": " ".join(f"{d:.4f}" for d in dev) or None,
        "train_end": epochs[-1]["train_loss"] if epochs else None,
    }
