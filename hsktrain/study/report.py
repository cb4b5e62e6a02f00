"""`hsktrain report STUDY`: a study's results table as Markdown, its marginal-utility figures
(`figures.py`), the claims (`claims.py`) checked against it, and the published students beside
its best arms (`anchors.py`).
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from pathlib import Path

from hsktrain.metrics import METRICS, ONE_ANSWER_MARGIN, main_metric
from hsktrain.outputs import output_file
from hsktrain.study.anchors import anchors_table, read_anchors
from hsktrain.study.arms import (
    ArmResults,
    arm_order,
    by_rows,
    group_arms,
    load_rows,
    one_answer_floors,
)
from hsktrain.study.claims import (
    NOT_RUN,
    check_targets,
    claim_extra_rows,
    claim_learned,
    claims,
    why_missed,
)
from hsktrain.study.figures import plot
from hsktrain.study.grid import read_targets
from hsktrain.study.runs import config_rows, parse_recipe
from hsktrain.study.tables import FLOOR, HSK_SHARES, builds_table, logs_table


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
    for a in sorted(arms, key=arm_order):
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
    for a in sorted(arms, key=arm_order):
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


def _of_teacher(score: float, teacher: float) -> str:
    """`88.4% (-10.4)`: a student's score as a share of its teacher's, and the points between."""
    return f"{100 * score / teacher:.1f}% ({100 * (score - teacher):+.1f})"


def write_report(study: str | Path) -> Path:
    """Write STUDY/README.md and one PNG per (task, teacher, extra rows) with an HSK arm to
    plot, from STUDY/results.csv.

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
    floors = one_answer_floors(builds)
    sections = [(k, n, sub) for k, arms in groups.items() for n, sub in by_rows(arms)]
    for (task, teacher), rows_name, arms in sections:
        metric = main_metric(task)
        several = sum(k == (task, teacher) for k, _, _ in sections) > 1
        extra = f", extra rows {rows_name}" if rows_name else ", no extra rows" * several
        name = f"{task}-{teacher}" + (f"-{rows_name or 'plain'}" if several else "")
        png = study / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', name)}.png"
        first, floor = arms[0], floors.get(task, {})
        drawn = plot(arms, metric, f"{task}, teacher {teacher}{extra}", png)
        if drawn:
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
            *([f"![marginal utility]({png.name})", ""] if drawn else []),
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
        md += anchors_table(ours, entries, scores)
    path = study / "README.md"
    path.write_text("\n".join(md) + "\n")
    for name in linked - written:
        (study / name).unlink(missing_ok=True)
    return path


def _figures(readme: Path) -> set[str]:
    """The PNGs a report links: its own, named in the study folder (a figure a user added and
    the report does not link is left alone)."""
    if not readme.is_file():
        return set()
    return set(re.findall(r"!\[[^\]]*\]\(([A-Za-z0-9._-]+\.png)\)", readme.read_text()))


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
