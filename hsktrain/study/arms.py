"""A study's results as arms: one configuration of one (task, teacher) over its seeds, the
unit every report table, claim, target and plot reads. Every number is a mean over seeds with its
sample standard deviation (n - 1) and n."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from hskcache.errors import HskError
from hsktrain.metrics import METRICS
from hsktrain.study.runs import config_rows
from hsktrain.study.tables import FLOOR, results_table

AXES = ("depth", "length", "width")
# The field whose value names an axis's curve; '-' (does not apply) joins every curve.
CURVE_BY = {"depth": "l_top", "length": "length", "width": "width_strategy"}


@dataclass
class ArmResults:
    """One configuration of one (task, teacher): its rows over seeds."""

    config: str
    kind: str
    axis: list[str]
    hsk: str
    length: str
    width_strategy: str
    l_top: str
    teacher_depth: int
    fraction: float
    scores: dict[str, list[float]] = field(default_factory=dict)  # metric -> one per seed
    seconds: list[float] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)  # what trained each seed (its seconds)
    best: list[tuple[str, str]] = field(default_factory=list)  # (stage, epoch) of each seed's best

    @property
    def n(self) -> int:
        return len(self.seconds)

    def mean(self, metric: str) -> float:
        return statistics.fmean(self.scores[metric])

    def std(self, metric: str) -> float | None:
        v = self.scores[metric]
        return statistics.stdev(v) if len(v) > 1 else None

    def show(self, metric: str) -> str:
        """`0.8123 +- 0.0040 (n=3)`; a single seed has no spread."""
        s = self.std(metric)
        spread = f" +- {s:.4f}" if s is not None else ""
        return f"{self.mean(metric):.4f}{spread} (n={self.n})"


def load_rows(study: str | Path) -> list[dict]:
    """STUDY/results.csv's rows.

    Raises:
        HskError: no results.csv, or no rows in it.
    """
    rows = results_table(study).rows()
    if not rows:
        raise HskError(
            f"{study}: no results.csv rows; run `hsktrain sweep` with this study folder first"
        )
    return rows


def group_arms(rows: list[dict]) -> dict[tuple[str, str], list[ArmResults]]:
    """Results rows grouped into arms, per (task, teacher), in the table's order."""
    out: dict[tuple[str, str], dict[str, ArmResults]] = {}
    for r in rows:
        arms = out.setdefault((r["task"], r["teacher"]), {})
        a = arms.get(r["config"])
        if a is None:
            a = arms[r["config"]] = ArmResults(
                r["config"],
                r["kind"],
                r["axis"].split("+"),
                r["hsk"],
                r["length"],
                r["width_strategy"],
                r["l_top"],
                int(r["teacher_depth"] or 0),
                float(r["hsk_fraction"] or 0),
            )
        for m in METRICS:
            if r[f"dev_{m}"]:
                a.scores.setdefault(m, []).append(float(r[f"dev_{m}"]))
        a.seconds.append(float(r["train_seconds"] or 0))
        a.devices.append(r["device"])
        a.best.append((r["best_stage"] or "-", r["best_epoch"] or "-"))
    return {k: list(v.values()) for k, v in out.items()}


def by_rows(arms: list[ArmResults]) -> list[tuple[str, list[ArmResults]]]:
    """A (task, teacher)'s arms per extra-rows variant (`""`: none, `augment4`, ...), each
    with the CE-only arm, which reads gold labels alone and so belongs to every variant: the
    claims compare arms that trained on the same rows. Variants in name order, none first,
    whatever order the runs landed in."""
    names = sorted({config_rows(a.config).name for a in arms if a.kind != "ce"})
    if len(names) <= 1 and not any(names):
        return [("", arms)]
    return [
        (n, [a for a in arms if a.kind == "ce" or config_rows(a.config).name == n]) for n in names
    ]


def full_arm(arms: list[ArmResults]) -> ArmResults | None:
    """The full-HSK reference: the `full` arm the study lists as a config, else the one with
    the most seeds."""
    full = [a for a in arms if a.hsk == "full"]
    return max(full, key=lambda a: ("config" in a.axis, a.n), default=None)


def listed(a: ArmResults) -> bool:
    """An HSK arm the study names in its `configs` or `joint` list (full HSK, `1l_10t_0.1h`,
    ...), whether or not it is also a point of an axis's curve."""
    return a.kind == "hsk" and bool({"config", "joint"} & set(a.axis))


def baseline(arms: list[ArmResults], kind: str) -> ArmResults | None:
    return next((a for a in arms if a.kind == kind), None)


def curves_on(arms: list[ArmResults], axis: str) -> dict[str, list[ArmResults]]:
    """An axis's arms by curve; arms whose curve field is '-' (every token, full width) join
    every curve, as its 100% point."""
    on = [a for a in arms if axis in a.axis and a.kind == "hsk"]
    by = CURVE_BY[axis]
    names = sorted({getattr(a, by) for a in on} - {"-"}, key=lambda s: (len(s), s))
    return {c: [a for a in on if getattr(a, by) in (c, "-")] for c in names}


def arm_order(a: ArmResults) -> tuple:
    """CE-only, prediction-only, full HSK, then the rest by HSK kept, most first; at equal
    HSK kept, an arm without extra rows before its twins with them, whatever order the runs
    landed in."""
    rows = config_rows(a.config).name
    return ({"ce": 0, "pred": 1, "hsk": 2}[a.kind], a.hsk != "full", -a.fraction, rows)


def one_answer_floors(builds: list[dict]) -> dict[str, dict[str, float]]:
    """task -> what answering one class for every dev row scores (the sweep records it)."""
    return {r["task"]: json.loads(r["dev"]) for r in builds if r["how"] == FLOOR and r["dev"]}
