"""`hsktrain report STUDY`: a study's results table as Markdown, marginal-utility plots, and the
claims checked against it: the paper's, and that distillation beats training without a teacher.

Every number is a mean over seeds with its sample standard deviation (n - 1) and n; a claim is
"held", "partly held" or "not held" from the means, with the seeds' spread printed beside it so
a reader sees when a difference is inside the noise, and "not enough data" when the arms it needs
are missing. The plots follow the paper's marginal-utility figures: dev score against the % of
HSK kept (log x, relative to the full-HSK arm), one curve per strategy per axis, full HSK,
prediction-only and CE-only as horizontal lines.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hskcache.errors import HskError
from hsktrain.metrics import METRICS, ONE_ANSWER_MARGIN, learned_nothing, main_metric
from hsktrain.outputs import output_file
from hsktrain.study.grid import (
    TARGETS,
    config_rows,
    parse_recipe,
    plain_config,
    read_anchors,
    read_targets,
)
from hsktrain.study.tables import FLOOR, builds_table, logs_table, results_table

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
    claims compare arms that trained on the same rows."""
    names = list(dict.fromkeys(config_rows(a.config).name for a in arms if a.kind != "ce"))
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


def baseline(arms: list[ArmResults], kind: str) -> ArmResults | None:
    return next((a for a in arms if a.kind == kind), None)


# --- claims -----------------------------------------------------------------------------------


def _tally(won: int, n: int, of: str = "arms") -> str:
    """`held (3 of 3 arms)`, `partly held (...)` or `not held (...)`: how many arms won."""
    verdict = "held" if won == n else "not held" if not won else "partly held"
    return f"{verdict} ({won} of {n} {of})"


def _spread(a: ArmResults, b: ArmResults, metric: str) -> str:
    """Whether a difference of means is inside the seeds' spread (the larger std)."""
    s = [x for x in (a.std(metric), b.std(metric)) if x is not None]
    if not s:
        return "single seeds: no spread to compare with"
    inside = abs(a.mean(metric) - b.mean(metric)) <= max(s)
    return f"difference {'inside' if inside else 'outside'} the seeds' spread ({max(s):.4f})"


def claim_compressed(arms: list[ArmResults], metric: str) -> tuple[str, list[str]]:
    full = full_arm(arms)
    small = [
        a for a in arms if a.kind == "hsk" and a.hsk != "full" and {"config", "joint"} & set(a.axis)
    ]
    if full is None or not small:
        return "not enough data", ["needs the `full` arm and a compressed config or joint arm"]
    lines = [
        f"{a.config}: {a.show(metric)} vs full {full.show(metric)}: "
        f"{'>=' if a.mean(metric) >= full.mean(metric) else '<'} ({_spread(a, full, metric)})"
        for a in small
    ]
    held = sum(a.mean(metric) >= full.mean(metric) for a in small)
    return _tally(held, len(small), "compressed arms"), lines


def claim_beats(arms: list[ArmResults], metric: str, kind: str) -> tuple[str, list[str]]:
    """Every distilled arm the study lists by name (prediction-only KD against CE-only, and the
    `configs`) against the `kind` baseline."""
    base = baseline(arms, kind)
    kd = [a for a in arms if "config" in a.axis or (kind == "ce" and a.kind == "pred")]
    if base is None or not kd:
        return "not enough data", [f"needs the {kind} baseline and a distilled arm"]
    lines = [
        f"{a.config}: {a.show(metric)} vs {kind} {base.show(metric)}: "
        f"{'>' if a.mean(metric) > base.mean(metric) else '<='} ({_spread(a, base, metric)})"
        for a in kd
    ]
    won = sum(a.mean(metric) > base.mean(metric) for a in kd)
    return _tally(won, len(kd)), lines


def _curves(arms: list[ArmResults], axis: str) -> dict[str, list[ArmResults]]:
    """An axis's arms by curve; arms whose curve field is '-' (every token, full width) join
    every curve, as its 100% point."""
    on = [a for a in arms if axis in a.axis and a.kind == "hsk"]
    by = CURVE_BY[axis]
    names = sorted({getattr(a, by) for a in on} - {"-"}, key=lambda s: (len(s), s))
    return {c: [a for a in on if getattr(a, by) in (c, "-")] for c in names}


def _order(
    arms: list[ArmResults], axis: str, order: list[str], metric: str, size
) -> tuple[str, list]:
    """Compare curves in `order` (best first) on the points they all have (by `size`), at
    below-full sizes; held when their average scores are in that order."""
    curves = {c: a for c, a in _curves(arms, axis).items() if c in order}
    present = [c for c in order if c in curves]
    if len(present) < 2:
        return "not enough data", [f"needs at least two of {order} on the {axis} axis"]
    points = {
        c: {size(a): a for a in curves[c] if getattr(a, CURVE_BY[axis]) != "-"} for c in present
    }
    common = sorted(set.intersection(*(set(p) for p in points.values())))
    if not common:
        return "not enough data", [f"{', '.join(present)} share no {axis} point below full"]
    avg = {c: statistics.fmean(points[c][x].mean(metric) for x in common) for c in present}
    lines = [
        f"{c}: mean over {common} = {avg[c]:.4f}; "
        + "; ".join(f"{x}: {points[c][x].show(metric)}" for x in common)
        for c in present
    ]
    held = all(avg[a] > avg[b] for a, b in zip(present, present[1:], strict=False))
    if axis == "width":  # the first against the best of the others
        held = avg[present[0]] > max(avg[c] for c in present[1:])
    missing = [c for c in order if c not in present]
    note = f" ({', '.join(missing)} missing)" if missing else ""
    return ("held" if held else "not held") + note, lines


def claim_ltop(arms: list[ArmResults], metric: str) -> tuple[str, list[str]]:
    curves = _curves(arms, "depth")
    depth = max((a.teacher_depth for a in arms), default=0)
    top = curves.get(str(depth))
    mids = {c: v for c, v in curves.items() if c != str(depth)}
    if not top or not mids:
        return "not enough data", [
            f"needs depth-axis arms at l_top {depth} (the top layer) and at an intermediate l_top"
        ]
    below = lambda v: {a.hsk.split("l_")[0]: a for a in v if a.hsk != "full"}  # noqa: E731
    t, lines, wins = below(top), [], []
    for c, v in mids.items():
        m = below(v)
        common = sorted(set(m) & set(t), key=int)
        if not common:
            continue
        a = statistics.fmean(m[x].mean(metric) for x in common)
        b = statistics.fmean(t[x].mean(metric) for x in common)
        wins.append(a > b)
        lines.append(
            f"l_top {c} vs top l_top {depth} over layers kept {common}: "
            f"{a:.4f} vs {b:.4f}; "
            + "; ".join(f"{x}l: {m[x].show(metric)} vs {t[x].show(metric)}" for x in common)
        )
    if not wins:
        return "not enough data", ["no layer count run at both an intermediate and the top l_top"]
    return ("held" if any(wins) else "not held"), lines


def claim_joint(arms: list[ArmResults], metric: str) -> tuple[str, list[str]]:
    joint = [a for a in arms if "joint" in a.axis and a.kind == "hsk"]
    single = [a for a in arms if set(AXES) & set(a.axis) and a.hsk != "full"]
    lines, wins = [], []
    for j in joint:
        near = [a for a in single if j.fraction / 2 <= a.fraction <= j.fraction * 2]
        if not near:
            lines.append(f"{j.config} ({j.fraction:.3%} kept): no single-axis arm within 2x")
            continue
        best = max(near, key=lambda a: a.mean(metric))
        wins.append(j.mean(metric) >= best.mean(metric))
        lines.append(
            f"{j.config} ({j.fraction:.3%}): {j.show(metric)} vs best single-axis "
            f"{best.config} ({best.fraction:.3%}): {best.show(metric)} "
            f"({_spread(j, best, metric)})"
        )
    if not wins:
        return "not enough data", lines or [
            "needs joint arms and single-axis arms of a similar HSK fraction (within 2x)"
        ]
    return f"{'held' if all(wins) else 'not held'} ({sum(wins)} of {len(wins)})", lines


def claim_extra_rows(
    plain: list[ArmResults], extra: list[ArmResults], metric: str
) -> tuple[str, list[str]]:
    """Each KD arm trained with the teacher-labelled extra rows against the same arm without
    them: the rows CE-only cannot use, and the reason to distil offline."""
    without = {a.config: a for a in plain if a.kind != "ce"}
    pairs = [
        (a, without[plain_config(a.config)])
        for a in extra
        if a.kind != "ce" and plain_config(a.config) in without
    ]
    if not pairs:
        return "not enough data", ["needs a KD arm run both with and without the extra rows"]
    lines = [
        f"{a.config}: {a.show(metric)} vs {b.config} {b.show(metric)}: "
        f"{'>' if a.mean(metric) > b.mean(metric) else '<='} ({_spread(a, b, metric)})"
        for a, b in pairs
    ]
    won = sum(a.mean(metric) > b.mean(metric) for a, b in pairs)
    return _tally(won, len(pairs)), lines


def claim_learned(
    arms: list[ArmResults], task: str, floor: dict[str, float]
) -> tuple[str, list[str]]:
    """Each arm's means against answering one class for every dev row (`floor`, the label
    prior), by the rule of `fit`'s warning (`learned_nothing`): an arm no metric of which is
    more than ONE_ANSWER_MARGIN above it learned nothing of the task, whatever it beats."""
    shown = sorted(
        (m for m in floor if any(m in a.scores for a in arms)), key=lambda m: m != main_metric(task)
    )
    points = lambda a, m: round(100 * (a.mean(m) - floor[m]), 2) + 0.0  # noqa: E731 (no -0.00)
    lines, learned = [], 0
    for a in sorted(arms, key=_arm_order):
        cleared = learned_nothing(task, {m: a.mean(m) for m in a.scores}, floor) is None
        learned += cleared
        above = ", ".join(f"{m} {points(a, m):+.2f}" for m in shown if m in a.scores)
        lines.append(
            f"{a.config}: {a.show(shown[0])}; points above it: {above} "
            f"({'cleared' if cleared else 'not cleared'})"
        )
    return _tally(learned, len(arms)), lines


def check_targets(
    arms: list[ArmResults], metric: str, teacher: float | None, targets: dict
) -> tuple[list[str], ArmResults | None]:
    """The study's [targets] (`grid.TARGETS`) for this section's `targets['arm']` + prediction,
    in `metric` (the task's main one, or the one [targets] names): each bound, the arm's mean,
    and `met`, `met inside the seeds' spread` (by less than the larger std of the arms
    compared: not firmly) or `missed by N points`; under 3 seeds, said.
    A bound set from another arm that lies above the teacher's own score is flagged: a student
    that learns its teacher well can leave CE-only no room to beat by the target's points.
    Returns the lines, and the arm when it missed a target (None when it met every one)."""
    arm = next((a for a in arms if a.kind == "hsk" and a.hsk == targets["arm"]), None)
    if arm is None:
        return [f"no `{targets['arm']}` arm here yet"], None
    if metric not in arm.scores:
        return [f"not judged: this task's runs score no {metric}"], None
    full, ce = full_arm(arms), baseline(arms, "ce")
    refs = {  # target -> (the bound, the arm it is set from, or None for the teacher)
        "of_teacher": (teacher * targets.get("of_teacher", 0), None) if teacher else None,
        "under_teacher": (teacher - targets.get("under_teacher", 0), None) if teacher else None,
        "over_ce": (ce.mean(metric) + targets.get("over_ce", 0), ce) if ce else None,
        "within_full": (full.mean(metric) - targets.get("within_full", 0), full) if full else None,
    }
    got, lines, missed = arm.mean(metric), [], False
    for key, text in TARGETS.items():
        if key not in targets:
            continue
        points = 100 * targets[key]
        what = text.format(
            share=f"{targets[key]:.0%}", points=f"{points:.3g} point" + "s" * (points != 1)
        )
        if refs[key] is None:
            need = "the teacher's dev score" if "teacher" in key else "its reference arm"
            lines.append(f"{what}: not judged, needs {need}")
            continue
        bound, ref = refs[key]
        missed |= got < bound
        spread = max((x for x in (arm.std(metric), ref and ref.std(metric)) if x), default=0.0)
        verdict = (
            f"**missed by {100 * (bound - got):.1f} points**"
            if got < bound
            else "met inside the seeds' spread"
            if got - bound < spread
            else "met"
        )
        if ref is not None and teacher is not None and bound > teacher:
            verdict += (
                f"; the bound is above the teacher's own {teacher:.4f}, "
                "which its students rarely pass"
            )
        lines.append(f"{what} (>= {bound:.4f}): {arm.show(metric)}: {verdict}")
    if arm.n < 3:
        lines.append(f"{arm.n} seed{'s' * (arm.n > 1)} so far: a target is judged on 3")
    return lines, arm if missed else None


NOT_RUN = "not run here"


def claims(arms: list[ArmResults], metric: str) -> list[tuple[str, str, list[str]]]:
    """(claim, verdict, evidence lines) for every claim; NOT_RUN for a claim about an axis the
    study has no arms on (a recipe study has none on the curves' axes)."""
    tokens = lambda a: int(a.hsk.split("l_")[1].split("t_")[0])  # noqa: E731
    width = lambda a: float(a.hsk.split("t_")[1].rstrip("h"))  # noqa: E731
    length = ["attention-no-sep", "attention", "left"]
    axes = {x for a in arms if a.kind == "hsk" for x in a.axis}
    judged = [
        ("distillation beats CE-only", *claim_beats(arms, metric, "ce")),
        ("HSK adds to prediction-only KD", *claim_beats(arms, metric, "pred")),
        ("compressed HSK >= full HSK", *claim_compressed(arms, metric)),
        (
            "attention-no-sep > attention > left (length)",
            *_order(arms, "length", length, metric, tokens),
        ),
        (
            "magnitude > uniform / random (width)",
            *_order(arms, "width", ["magnitude", "uniform", "random"], metric, width),
        ),
        (
            "per-token top-k (what a cache stores) > the paper's per-batch threshold (width)",
            *_order(arms, "width", ["magnitude", "threshold"], metric, width),
        ),
        ("an intermediate l_top beats the top layer (depth)", *claim_ltop(arms, metric)),
        ("joint compression beats single-axis at equal budget", *claim_joint(arms, metric)),
    ]
    needs = [None, None, None, "length", "width", "width", "depth", "joint"]
    return [
        (name, verdict, lines) if axis is None or axis in axes else (name, NOT_RUN, [])
        for (name, verdict, lines), axis in zip(judged, needs, strict=True)
    ]


# --- plots and the Markdown -------------------------------------------------------------------


def plot(arms: list[ArmResults], metric: str, title: str, png: Path) -> None:
    """Three panels (depth, length, width): score vs % of HSK kept, one curve per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    full = full_arm(arms)
    ref = full.fraction if full and full.fraction else 1.0
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharey=True)
    lines = [
        (full, "full HSK", "-"),
        (baseline(arms, "pred"), "prediction only", "--"),
        (baseline(arms, "ce"), "CE only", ":"),
    ]
    for ax, axis in zip(axes, AXES, strict=True):
        curves = _curves(arms, axis)
        for name, on in curves.items():
            on = sorted(on, key=lambda a: a.fraction)
            x = [100 * a.fraction / ref for a in on]
            ax.errorbar(
                x,
                [a.mean(metric) for a in on],
                [a.std(metric) or 0 for a in on],
                marker="o",
                capsize=3,
                label=f"l_top {name}" if axis == "depth" else name,
            )
        for arm, label, style in lines:
            if arm is not None:
                ax.axhline(arm.mean(metric), color="gray", linestyle=style, label=label)
        if not curves:
            ax.text(0.5, 0.5, "no runs on this axis", ha="center", transform=ax.transAxes)
        else:
            ax.set_xscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            ax.xaxis.set_major_formatter(plain)
            lo, hi = ax.get_xlim()
            # under a decade wide the log axis labels only minor ticks: as plain numbers too
            ax.xaxis.set_minor_formatter(plain if hi / lo < 10 else NullFormatter())
        ax.set_title(axis)
        ax.set_xlabel("% of HSK kept" + (" (of the full-HSK arm's)" if full else ""))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    axes[0].set_ylabel(f"dev {metric}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def _arm_order(a: ArmResults) -> tuple:
    """CE-only, prediction-only, full HSK, then the rest by HSK kept, most first."""
    return ({"ce": 0, "pred": 1, "hsk": 2}[a.kind], a.hsk != "full", -a.fraction)


def _best(a: ArmResults) -> str:
    """Each seed's best dev epoch (1-based, in its stage): `pred 3, 1, 3` when one stage holds
    them all. An arm whose best comes at its last epoch wanted more; at its first, less."""
    stages = {s for s, _ in a.best}
    if len(stages) == 1:
        return f"{stages.pop()} {', '.join(e for _, e in a.best)}"
    return ", ".join(f"{s} {e}" for s, e in a.best)


def _seconds(a: ArmResults, label: bool) -> str:
    """Mean train seconds, per device (`875 cpu, 12 cuda (...)`) unless all ran on one."""
    by: dict[str, list[float]] = {}
    for device, s in zip(a.devices, a.seconds, strict=True):
        by.setdefault(device, []).append(s)
    if len(by) == 1 and not label:
        return f"{statistics.fmean(a.seconds):.0f}"
    return ", ".join(f"{statistics.fmean(v):.0f} {d}" for d, v in by.items())


def _teacher_line(teacher: str, how: str, dev: str) -> str:
    scores = ", ".join(f"{k} {v:.4f}" for k, v in json.loads(dev).items())
    return f"- teacher `{teacher}` {how}: dev {scores}"


def _wall_clock(results: list[dict], builds: list[dict]) -> list[str]:
    """The study's compute, per device: `**1.20 h** on cpu (... s training 6 runs + ...)`."""
    spent = [r for r in builds if r["how"] != FLOOR]  # a floor is read, not computed
    devices = list(dict.fromkeys(r["device"] for r in [*results, *spent]))
    out = []
    for d in devices:
        runs = [r for r in results if r["device"] == d]
        made = [r for r in spent if r["device"] == d and r["how"] != "reuse"]
        train_s = sum(float(r["train_seconds"] or 0) for r in runs)
        build_s = sum(float(r["seconds"] or 0) for r in made)
        resumed = sum(r["how"].endswith("(resumed)") for r in made)
        cut = f", {resumed} of them resumed after a kill: their earlier time not counted"
        out.append(
            f"**{(train_s + build_s) / 3600:.2f} h** on {d} ({train_s:.0f} s training "
            f"{len(runs)} runs + {build_s:.0f} s fine-tuning, building and deriving "
            f"{len(made)} teachers and caches{cut if resumed else ''})"
        )
    return out


def _table(
    arms: list[ArmResults], metric: str, teacher: float | None, floor: dict[str, float]
) -> list[str]:
    """The arms' Markdown table; with the teacher's own dev score (`teacher`, when this study
    fine-tuned it or recorded it reused), each arm's main metric also as a share of it and the
    points under it; with the task's one-answer `floor` (builds.csv), a last row of it."""
    several = len({d for a in arms for d in a.devices}) > 1  # name the device in every cell
    others = [m for m in METRICS if m != metric and any(m in a.scores for a in arms)]
    head = [
        "config",
        "kind",
        "axis",
        "HSK kept",
        "n",
        f"dev {metric}",
        *["of teacher (points)"] * (teacher is not None),
        *others,
        "best epoch",
        "train s",
    ]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in sorted(arms, key=_arm_order):
        cells = [
            f"`{a.config}`",
            a.kind,
            "+".join(a.axis),
            f"{100 * a.fraction:.3g}%" if a.kind == "hsk" else "-",
            str(a.n),
            a.show(metric).rsplit(" (", 1)[0],
            *([_of_teacher(a.mean(metric), teacher)] if teacher is not None else []),
            *(a.show(m).rsplit(" (", 1)[0] if m in a.scores else "-" for m in others),
            _best(a),
            _seconds(a, several),
        ]
        out.append("| " + " | ".join(cells) + " |")
    if metric in floor:
        cells = [
            "*one answer for every row*",
            "floor",
            "-",
            "-",
            "-",
            f"{floor[metric]:.4f}",
            *([_of_teacher(floor[metric], teacher)] if teacher is not None else []),
            *(f"{floor[m]:.4f}" if m in floor else "-" for m in others),
            "-",
            "-",
        ]
        out.append("| " + " | ".join(cells) + " |")
    return out


HSK_SHARES = ("hsk_start", "hsk_end")  # logs.csv's shares of an all-zero prediction's loss


def _mean_share(v: list[float], logs: int) -> str:
    """`83%`, or `83% (n=1)` when fewer seeds than the arm's logs have it (older logs lack it)."""
    if not v:
        return "-"
    return f"{100 * statistics.fmean(v):.0f}%" + (f" (n={len(v)})" if len(v) < logs else "")


def _log_table(arms: list[ArmResults], logs: list[dict]) -> list[str]:
    """How the arms learned, from logs.csv (means over the seeds with a log): the HSK loss as a
    share of an all-zero prediction's at step 1 and over the HSK stage's last epoch, and the
    main dev metric after each scored epoch; empty when no arm here has a log."""
    out = []
    for a in sorted(arms, key=_arm_order):
        mine = [r for r in logs if r["config"] == a.config]
        if not mine:
            continue
        curves = [[float(x) for x in r["dev_curve"].split()] for r in mine if r["dev_curve"]]
        epochs = min(map(len, curves), default=0)  # seeds logged alike; a short one cuts it
        cells = [
            f"`{a.config}`",
            str(len(mine)),
            *(_mean_share([float(r[k]) for r in mine if r[k]], len(mine)) for k in HSK_SHARES),
            " ".join(f"{statistics.fmean(c[e] for c in curves):.4f}" for e in range(epochs)) or "-",
        ]
        out.append("| " + " | ".join(cells) + " |")
    if not out:
        return []
    head = [
        "config",
        "logs",
        "HSK loss at step 1",
        "at the HSK stage's end",
        "dev after each epoch",
    ]
    return [
        "### How the arms learned",
        "",
        "From each run's log (`logs.csv`, means over the seeds logged): the HSK loss as a share "
        "of what an all-zero prediction scores on the same targets (100%: the student knows "
        "nothing of the teacher's states), and the main dev metric after each scored epoch "
        "(still rising at the end: the arm wanted more epochs).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *out,
        "",
    ]


def why_missed(arm: ArmResults, logs: list[dict]) -> str | None:
    """What the arm's own logs say about a missed target: where each seed's dev curve peaks
    (at its last epoch: it wanted more epochs; at its first and falling after: more epochs alone
    would not help) and how near the teacher's states its HSK stage got (shares of an all-zero
    prediction's loss). None without logs."""
    mine = [r for r in logs if r["config"] == arm.config]
    curves = [[float(x) for x in r["dev_curve"].split()] for r in mine if r["dev_curve"]]
    curves = [c for c in curves if len(c) > 1]  # one epoch has no first or last to tell apart
    parts = []
    if curves:
        peaks = [c.index(max(c)) for c in curves]
        last = sum(p == len(c) - 1 for p, c in zip(peaks, curves, strict=True))
        first = sum(p == 0 for p in peaks)
        n = len(curves)
        if last:
            parts.append(f"best at its last epoch in {last} of {n} seeds (it wanted more epochs)")
        if first:
            parts.append(
                f"best at its first epoch in {first} of {n} seeds, falling after (more epochs "
                "alone would not help)"
            )
        if between := n - first - last:
            parts.append(f"best between its first and last epochs in {between} of {n} seeds")
    shares = {k: [float(r[k]) for r in mine if r[k]] for k in HSK_SHARES}
    if shares["hsk_end"]:
        start = statistics.fmean(shares["hsk_start"]) if shares["hsk_start"] else None
        since = f", from {start:.0%} at step 1" if start is not None else ""
        parts.append(
            f"its HSK loss ends its stage at {statistics.fmean(shares['hsk_end']):.0%} of an "
            f"all-zero prediction's{since}"
        )
    return "; ".join(parts) or None


def _of_teacher(score: float, teacher: float) -> str:
    """`88.4% (-10.4)`: a student's score as a share of its teacher's, and the points between."""
    return f"{100 * score / teacher:.1f}% ({100 * (score - teacher):+.1f})"


def write_report(study: str | Path) -> Path:
    """Write STUDY/README.md and one PNG per (task, teacher, extra rows) from
    STUDY/results.csv.

    Raises:
        HskError: the study has no results yet, or a table is malformed.
        ConfigError: the report cannot be written in the study folder.
    """
    study = Path(study)
    results, builds, logs = load_rows(study), builds_table(study).rows(), logs_table(study).rows()
    output_file(study / "README.md", "the report")
    linked = _figures(study / "README.md")  # the last report's: one a split no longer has goes
    written: set[str] = set()
    groups = group_arms(results)
    config = study / "study.toml"  # the study's own config, when it sits in its folder
    targets = read_targets(str(config)) if config.is_file() else {}
    anchors = read_anchors(str(config)) if config.is_file() else []
    md = [
        f"# Study `{study.name}`",
        "",
        f"Regenerate: `hsktrain report {study}` (from `results.csv`, `builds.csv`). "
        "Scores are dev-set means over seeds +- their sample standard deviation; n = seeds.",
        "",
        "Wall-clock of the whole study, summed over its runs and builds (shards that ran at "
        f"once overlapped, so less time passed): {'; '.join(_wall_clock(results, builds))}.",
        "",
    ]
    inits = dict.fromkeys(parse_recipe(r["recipe"]).get("init_from") for r in results)
    if named := [f"`{i}`" for i in inits if i]:  # a general student: made by other commands
        md += [
            f"Not counted: making the pretrained init the runs start from, {', '.join(named)}.",
            "",
        ]
    # a teacher fine-tuned again on the same machine (its folder did not survive) has the same
    # key, weights and scores; on another CPU other weights, so another key and line
    tunes = Counter((r["teacher"], r["task"], r["dev"]) for r in builds if r["how"] == "finetune")
    reused = {
        (r["teacher"], r["task"], r["dev"]): r["source"] for r in builds if r["how"] == "reuse"
    }
    scores: dict[tuple[str, str], dict[str, float]] = {}
    for (teacher, task, dev), times in tunes.items():
        if dev:
            scores[(task, teacher)] = json.loads(dev)
            again = f" (fine-tuned {times} times here, the same weights each time)"
            md.append(_teacher_line(teacher, f"fine-tuned on {task}", dev) + again * (times > 1))
    for (teacher, task, dev), source in reused.items():
        if dev and (task, teacher) not in scores:
            scores[(task, teacher)] = json.loads(dev)
            how = f"fine-tuned on {task} by another study (`{source}`)"
            md.append(_teacher_line(teacher, how, dev))
    floors = _floors(builds)
    sections = [(k, n, sub) for k, arms in groups.items() for n, sub in by_rows(arms)]
    for (task, teacher), rows_name, arms in sections:
        metric = main_metric(task)
        several = sum(k == (task, teacher) for k, _, _ in sections) > 1
        extra = f", extra rows {rows_name}" if rows_name else ", no extra rows" * several
        name = f"{task}-{teacher}" + (f"-{rows_name or 'plain'}" if several else "")
        png = study / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}.png"
        first, floor = arms[0], floors.get(task, {})
        plot(arms, metric, f"{task}, teacher {teacher}{extra}", png)
        written.add(png.name)
        mine = [
            r for r in results if r["kind"] == "ce" or config_rows(r["config"]).name == rows_name
        ]
        md += [
            "",
            f"## {task}, teacher `{teacher}`{extra}",
            "",
            f"Student `{_first(mine, task, teacher, 'student')}`, epochs "
            f"{_first(mine, task, teacher, 'hsk_epochs')} HSK + "
            f"{_first(mine, task, teacher, 'pred_epochs')} prediction "
            "(CE-only and prediction-only arms train the same total in their one stage), "
            f"training rows limit {_first(mine, task, teacher, 'limit') or 'none'}, "
            f"teacher depth {first.teacher_depth}.",
            "",
            *_recipes(mine, task, teacher),
            "",
            *_table(arms, metric, scores.get((task, teacher), {}).get(metric), floor),
            "",
            f"![marginal utility]({png.name})",
            "",
        ]
        logged = [r for r in logs if (r["task"], r["teacher"]) == (task, teacher)]
        md += _log_table(arms, logged)
        if targets:
            judged = targets.get("metric", metric)
            head = f"`{targets['arm']}` + prediction, dev {judged}, mean over seeds:"
            md += ["### Targets", "", head, ""]
            teacher_score = scores.get((task, teacher), {}).get(judged)
            judged_lines, missed = check_targets(arms, judged, teacher_score, targets)
            md += [f"- {x}" for x in judged_lines]
            if missed is not None and (why := why_missed(missed, logged)):
                md.append(f"- why, from its logs: {why}")
            md.append("")
        md += ["### Claims checked here", ""]
        checked = claims(arms, metric)
        if rows_name:
            plain = next((a for k, n, a in sections if k == (task, teacher) and not n), [])
            claim = "teacher-labelled extra rows help KD (the same arm without them)"
            checked.insert(2, (claim, *claim_extra_rows(plain, arms, metric)))
        if floor:  # first: beating another arm means little if neither learned
            order = sorted(floor, key=lambda m: m != metric)  # the main metric first
            named = ", ".join(f"{m} {floor[m]:.4f}" for m in order)
            claim = (
                f"the students learned the task (a metric > {100 * ONE_ANSWER_MARGIN:g} point "
                f"above answering one class for every row: {named})"
            )
            checked.insert(0, (claim, *claim_learned(arms, task, floor)))
        for name, verdict, lines in checked:
            if verdict != NOT_RUN:
                md.append(f"- **{name}**: {verdict}")
                md += [f"  - {line}" for line in lines]
        if skipped := [name for name, verdict, _ in checked if verdict == NOT_RUN]:
            md.append(f"- not judged, no arms on their axis in this study: {'; '.join(skipped)}")
    if ours := [a for a in anchors if a["task"] in {task for task, _ in groups}]:
        entries = [
            (
                f"here: `{_first(results, task, teacher, 'student')}`",
                task,
                teacher,
                f"{rows_name or 'no extra rows'}; teacher `{teacher}`",
                arms,
            )
            for (task, teacher), rows_name, arms in sections
        ]
        md += _anchors(ours, entries, scores)
    path = study / "README.md"
    path.write_text("\n".join(md) + "\n")
    for name in linked - written:
        (study / name).unlink(missing_ok=True)
    return path


# one line of the anchors table a report (or compare) sets beside the published students:
# (label, task, its teacher as `teachers` keys it, what it had, its arms)
Entry = tuple[str, str, str, str, list[ArmResults]]


def _anchors(
    anchors: list[dict], entries: list[Entry], teachers: dict[tuple[str, str], dict[str, float]]
) -> list[str]:
    """The published students, then each entry's best arm in each anchor metric of its task:
    every score also as a share of its own teacher's (`teachers[(task, key)]`)."""
    share = lambda score, teacher: f"{score / teacher:.1%}" if teacher else "-"  # noqa: E731
    out = [
        "",
        "## Published anchors",
        "",
        "Published students (the study file's `anchors` file, copied from their papers, never "
        "measured here) and the best arm here in each of their metrics, each against its own "
        "teacher. A test score is GLUE's server's: not comparable with a dev score to the point.",
        "",
        "| student | task | split | metric | score | its teacher | share | what it had | source |",
        "|" + "---|" * 9,
    ]
    for a in anchors:
        teacher = a.get("teacher")
        cells = [a["name"], a["task"], a["split"], a["metric"], f"{a['score']:.4f}"]
        cells += [f"{teacher:.4f}" if teacher else "-", share(a["score"], teacher)]
        out.append("| " + " | ".join([*cells, a.get("had", "-"), a["source"]]) + " |")
    for label, task, key, had, arms in entries:
        for m in dict.fromkeys(a["metric"] for a in anchors if a["task"] == task):
            if not (scored := [x for x in arms if m in x.scores]):
                continue
            best = max(scored, key=lambda x: x.mean(m))
            own = teachers.get((task, key), {}).get(m)
            cells = [f"{label}, `{best.config}`", task, "dev", m, best.show(m)]
            cells += [f"{own:.4f}" if own else "-", share(best.mean(m), own)]
            out.append("| " + " | ".join([*cells, had, "here"]) + " |")
    return out


def _floors(builds: list[dict]) -> dict[str, dict[str, float]]:
    """task -> what answering one class for every dev row scores (the sweep records it)."""
    return {r["task"]: json.loads(r["dev"]) for r in builds if r["how"] == FLOOR and r["dev"]}


def _references(studies: list[str | Path]) -> tuple[dict, dict]:
    """What `compare` sets every study against: (task, teacher hash) -> the teacher's dev
    scores, and task -> the one-answer floor, from the studies' builds tables (the first that
    has one)."""
    teachers: dict[tuple[str, str], dict[str, float]] = {}
    floors: dict[str, dict[str, float]] = {}
    for s in studies:
        builds = builds_table(s).rows()
        for r in builds:
            if r["how"] in ("finetune", "reuse") and r["dev"]:
                teachers.setdefault(
                    (r["task"], r["teacher"].rsplit("@", 1)[-1]), json.loads(r["dev"])
                )
        for task, floor in _floors(builds).items():
            floors.setdefault(task, floor)
    return teachers, floors


def _figures(readme: Path) -> set[str]:
    """The PNGs a report links: its own, named in the study folder (a figure a user added and
    the report does not link is left alone)."""
    if not readme.is_file():
        return set()
    return set(re.findall(r"!\[[^\]]*\]\(([A-Za-z0-9._-]+\.png)\)", readme.read_text()))


def compare(studies: list[str | Path]) -> str:
    """Markdown: per task, one row per study, one column per arm the studies share by name,
    mean +- std (n) of each metric; a study is labelled by the fit options in which its
    recipes differ from the first study's (the recipe question: same arms, other options).

    A study with no results yet (a paper-scale one still to run) is named under the title and
    left out, so `make study` compares the ones that ran.

    Raises:
        HskError: fewer than two studies with results.
    """
    read = {s: results_table(s).rows() for s in studies}  # each table once
    waiting = [s for s in studies if not read[s]]
    studies = [s for s in studies if s not in waiting]
    if len(studies) < 2:
        none = f"; no results.csv rows in {', '.join(map(str, waiting))}" if waiting else ""
        raise HskError(
            f"compare needs two or more study folders with results{none}: run `hsktrain sweep` "
            "with each first"
        )
    # a teacher is its weights: studies that name one folder differently still compare
    tables = [read[s] for s in studies]
    groups = [
        {(t, w.rsplit("@", 1)[-1]): (w, a) for (t, w), a in group_arms(rows).items()}
        for rows in tables
    ]
    recipes = [_recipe_of(rows) for rows in tables]
    teachers, floors = _references(studies)
    md = [
        f"# {len(studies)} studies compared",
        "",
        f"Regenerate: `hsktrain compare {' '.join(str(s) for s in [*studies, *waiting])}`. "
        "Cells: dev score, mean +- sample std over seeds (n = seeds).",
    ]
    if waiting:
        md += ["", f"No results yet, left out: {', '.join(f'`{s}`' for s in waiting)}."]
    for key in dict.fromkeys(k for g in groups for k in g):
        task, teacher = key[0], next(g[key][0] for g in groups if key in g)
        rows = [
            (s, g[key][1], r) for s, g, r in zip(studies, groups, recipes, strict=True) if key in g
        ]
        union = {a.config: a for _, arms, _ in reversed(rows) for a in arms}
        configs = [a.config for a in sorted(union.values(), key=_arm_order)]
        metrics = [m for m in METRICS if any(m in a.scores for a in union.values())]
        metrics.sort(key=lambda m: m != main_metric(task))
        for m in metrics:
            md += [
                "",
                f"## {task}, teacher `{teacher}`: dev {m}",
                "",
                "| study | recipe vs the first | " + " | ".join(f"`{c}`" for c in configs) + " |",
                "|" + "---|" * (len(configs) + 2),
            ]
            for study, arms, recipe in rows:
                by = {a.config: a for a in arms}
                cells = [by[c].show(m) if c in by and m in by[c].scores else "-" for c in configs]
                label = _recipe_diff(recipes[0], recipe) or "-"
                md.append(f"| `{Path(study).name}` | {label} | " + " | ".join(cells) + " |")
            refs = [
                f"{who} {scores[m]:.4f}"
                for who, scores in (
                    ("the teacher", teachers.get(key, {})),
                    ("answering one class for every row", floors.get(task, {})),
                )
                if m in scores
            ]
            if refs:
                md += ["", f"Against: {'; '.join(refs)}."]
    anchors = {  # every study's, once
        (a["name"], a["task"], a["metric"], a["split"]): a
        for s in studies
        if (Path(s) / "study.toml").is_file()
        for a in read_anchors(str(Path(s) / "study.toml"))
    }
    tasks = {task for g in groups for task, _ in g}
    if ours := [a for a in anchors.values() if a["task"] in tasks]:
        entries = [
            (f"`{Path(s).name}`", key[0], key[1], f"teacher `{g[key][0]}`", g[key][1])
            for s, g in zip(studies, groups, strict=True)
            for key in g
        ]
        md += _anchors(ours, entries, teachers)
    return "\n".join(md) + "\n"


def _recipe_of(rows: list[dict]) -> dict[str, dict[str, str]]:
    """kind -> its runs' recipe as {option: value} (the first row of that kind), with its
    student shape (an init is a recipe) and budget: `epochs` HSK+prediction and the
    training-row `limit` (a stage split is a recipe). Arms with extra rows are their own kind
    (`hsk+augment4`): their limit counts the extra rows, so they compare with their like."""
    out: dict[str, dict[str, str]] = {}
    for r in rows:
        kind = "+".join(filter(None, (r["kind"], config_rows(r["config"]).name)))
        budget = {"epochs": f"{r['hsk_epochs']}+{r['pred_epochs']}", "limit": r["limit"] or "none"}
        out.setdefault(kind, {"student": r["student"]} | parse_recipe(r["recipe"]) | budget)
    return out


def _recipe_diff(base: dict[str, dict[str, str]], other: dict[str, dict[str, str]]) -> str:
    """`warmup=0.1 lr_decay=linear`, per kind where kinds differ differently (`ce: ...`); an
    option the first study set and this one did not reads `=None`, as a recipe cell writes it."""
    diffs: dict[str, list[str]] = {}
    for kind, rec in other.items():
        ref = base.get(kind) or base.get(plain_config(kind), {})  # else the plain twin
        keys = dict.fromkeys([*rec, *ref])
        d = (
            " ".join(f"{k}={rec.get(k, 'None')}" for k in keys if ref.get(k) != rec.get(k))
            if ref
            else "?"
        )
        diffs.setdefault(d, []).append(kind)
    diffs.pop("", None)
    if len(diffs) == 1 and len(next(iter(diffs.values()))) == len(other):
        return next(iter(diffs))
    return "; ".join(f"{', '.join(kinds)}: {d}" for d, kinds in diffs.items())


def _recipes(rows: list[dict], task: str, teacher: str) -> list[str]:
    """The `fit` options the runs trained with, one line per distinct recipe and its kinds."""
    kinds: dict[str, list[str]] = {}
    for r in rows:
        if (
            r["task"] == task
            and r["teacher"] == teacher
            and r["kind"] not in kinds.get(r["recipe"], [])
        ):
            kinds.setdefault(r["recipe"], []).append(r["kind"])
    return [f"- fit recipe of {', '.join(k)}: `{recipe}`" for recipe, k in kinds.items()]


def _first(rows: list[dict], task: str, teacher: str, key: str) -> str:
    return next(
        (
            r[key]
            for r in rows
            if r["task"] == task and r["teacher"] == teacher and r["kind"] == "hsk"
        ),
        next((r[key] for r in rows if r["task"] == task), ""),
    )
