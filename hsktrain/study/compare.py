"""`hsktrain compare STUDY...`: studies side by side, one row per study and one column per arm
they share by name, each study labelled by how its fit recipe differs from the first's (the
recipe question: the same arms, other options)."""

from __future__ import annotations

import json
from pathlib import Path

from hskcache.errors import HskError
from hsktrain.metrics import METRICS, main_metric
from hsktrain.study.anchors import anchors_table, read_anchors
from hsktrain.study.arms import arm_order, group_arms, one_answer_floors
from hsktrain.study.runs import config_rows, parse_recipe, plain_config
from hsktrain.study.tables import builds_table, results_table, teacher_parts


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
                    (r["task"], teacher_parts(r["teacher"])[1]), json.loads(r["dev"])
                )
        for task, floor in one_answer_floors(builds).items():
            floors.setdefault(task, floor)
    return teachers, floors


def compare(studies: list[str | Path]) -> str:
    """Markdown: per task, one row per study, one column per arm the studies share by name,
    mean +- std (n) of each metric; a study is labelled by the fit options in which its
    recipes for that task and teacher differ from the first study's for that task (the recipe
    question: same arms, other options; one task's row limit is no difference from another's).

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
        {(t, teacher_parts(w)[1]): (w, a) for (t, w), a in group_arms(rows).items()}
        for rows in tables
    ]
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
        rows = [  # (study, its arms, its recipe for this task and teacher)
            (s, g[key][1], _recipe_of([r for r in t if _key_of(r) == key]))
            for s, g, t in zip(studies, groups, tables, strict=True)
            if key in g
        ]
        # what each is labelled against: the first study's recipe for this task, whichever
        # teacher (two shapes, each under its own teacher, still differ by their student)
        first = next(t for t in tables if any(r["task"] == task for r in t))
        base = _recipe_of([r for r in first if r["task"] == task])
        union = {a.config: a for _, arms, _ in reversed(rows) for a in arms}
        configs = [a.config for a in sorted(union.values(), key=arm_order)]
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
                label = _recipe_diff(base, recipe) or "-"
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
        md += anchors_table(ours, entries, teachers)
    return "\n".join(md) + "\n"


def _key_of(row: dict) -> tuple[str, str]:
    """(task, teacher hash) of a results row: `compare`'s section, whatever the teacher's name."""
    return row["task"], teacher_parts(row["teacher"])[1]


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
