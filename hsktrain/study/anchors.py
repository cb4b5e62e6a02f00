"""Published students a study's report sets its arms beside: a TOML file of [[anchors]] (copied
from their papers, never measured here) that a study file names by `anchors`, one file for every
study of a task. Read and checked apart from the grid: the sweep ignores them."""

from __future__ import annotations

from pathlib import Path

from hskcache.config import read_toml
from hskcache.errors import ConfigError
from hsktrain.metrics import METRICS

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
