"""The claims a report checks against a study's arms: the paper's (compressed HSK matches full
HSK, the length, width and depth orderings, joint compression), that distillation beats training
without a teacher, that the students learned the task at all, and the study's own [targets].

A claim is "held", "partly held" or "not held" from the means, with the seeds' spread printed
beside it so a reader sees when a difference is inside the noise, and "not enough data" when the
arms it needs are missing.
"""

from __future__ import annotations

import statistics

from hsktrain.metrics import learned_nothing, main_metric
from hsktrain.study.arms import (
    AXES,
    CURVE_BY,
    ArmResults,
    arm_order,
    baseline,
    curves_on,
    full_arm,
    listed,
)
from hsktrain.study.grid import TARGETS
from hsktrain.study.runs import plain_config
from hsktrain.study.tables import HSK_SHARES


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


def _points(x: float) -> str:
    """`1.8`, or `0.04` where one decimal would read as a miss of nothing."""
    return f"{x:.1f}" if round(x, 1) else f"{x:.2f}"


def claim_compressed(arms: list[ArmResults], metric: str) -> tuple[str, list[str]]:
    full = full_arm(arms)
    small = [a for a in arms if listed(a) and a.hsk != "full"]
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


def _order(
    arms: list[ArmResults], axis: str, order: list[str], metric: str, size
) -> tuple[str, list]:
    """Compare curves in `order` (best first) on the points they all have (by `size`), at
    below-full sizes; held when their average scores are in that order."""
    curves = {c: a for c, a in curves_on(arms, axis).items() if c in order}
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
    curves = curves_on(arms, "depth")
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
    for a in sorted(arms, key=arm_order):
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
            f"**missed by {_points(100 * (bound - got))} points**"
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
