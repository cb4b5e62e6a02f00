"""Published students a study's report sets its arms beside: a TOML file of [[anchors]] (copied
from their papers, never measured here) that a study file names by `anchors`, one file for every
study of a task. Read and checked apart from the grid: the sweep ignores them. `anchors_table`
sets them beside a report's (or a comparison's) best arms."""

from __future__ import annotations

from pathlib import Path

from hskcache.config import read_toml
from hskcache.errors import ConfigError
from hsktrain.metrics import METRICS
from hsktrain.study.arms import ArmResults

# an anchors file's [[anchors]]: published students a report sets a study's arms beside (never
# measured here), each against its own teacher: key -> required
ANCHOR_KEYS = {
    "name": True,  # the student, as its paper names it
    "task": True,  # a task short name (mrpc, sst2, ...)
    "metric": True,  # one of METRICS
    "score": True,  # a fraction, as the tables write scores (86.4 -> 0.864)
    "split": True,  # dev or test (GLUE's server: not the dev split to the point)
    "teacher": False,  # its teacher's score in the same metric and split, when published
    "had": False,  # what it had that a study here may not (general distillation, 20x rows)
    "source": True,  # the paper
}


def read_anchors(path: str) -> list[dict]:
    """The published students a study file's `anchors` names (a TOML file of [[anchors]],
    relative to the study file), checked; none when it names no file.

    Raises:
        ConfigError: an unreadable or missing file, or a bad anchor, every problem named.
    """
    name = read_toml(path, "the study config").get("anchors")
    if name is None:
        return []
    if not isinstance(name, str):
        raise ConfigError(f"{path}: anchors = {name!r} must be a file name")
    file = Path(path).parent / name
    if not file.is_file():
        raise ConfigError(
            f"{path}: anchors file {file} not found; fix the path (relative to {path})"
        )
    anchors = read_toml(str(file), "the anchors file").get("anchors", [])
    if not isinstance(anchors, list) or not all(isinstance(a, dict) for a in anchors):
        raise ConfigError(f"{file}: anchors must be an array of tables ([[anchors]])")
    if p := anchors_problems(anchors):
        raise ConfigError(f"{file}: {'; '.join(p)}")
    return anchors


def anchors_problems(anchors: list[dict]) -> list[str]:
    """[[anchors]]: the keys of ANCHOR_KEYS, the required ones present, a metric a run scores,
    scores as fractions in (0, 1] (a percentage is a common slip), a dev or test split."""
    p = []
    for i, a in enumerate(anchors):
        at = f"anchors[{i}]" + (f" ({a['name']})" if isinstance(a.get("name"), str) else "")
        p += [f"{at}: unknown key '{k}'" for k in a if k not in ANCHOR_KEYS]
        p += [f"{at}: missing '{k}'" for k, need in ANCHOR_KEYS.items() if need and k not in a]
        if "metric" in a and a["metric"] not in METRICS:
            p.append(f"{at}: metric {a['metric']!r} must be one of {', '.join(METRICS)}")
        if "split" in a and a["split"] not in ("dev", "test"):
            p.append(f"{at}: split {a['split']!r} must be dev or test")
        p += [
            f"{at}: {k} = {a[k]!r} must be a fraction in (0, 1] (86.4 is 0.864)"
            for k in ("score", "teacher")
            if k in a
            and (isinstance(a[k], bool) or not (isinstance(a[k], int | float) and 0 < a[k] <= 1))
        ]
        p += [
            f"{at}: {k} must be text"
            for k in ("name", "task", "had", "source")
            if k in a and not isinstance(a[k], str)
        ]
    return p


# one line of the anchors table a report (or compare) sets beside the published students:
# (label, task, its teacher as `teachers` keys it, what it had, its arms)
Entry = tuple[str, str, str, str, list[ArmResults]]


def anchors_table(
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
