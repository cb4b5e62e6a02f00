"""A study's teachers: which model a task's caches are built from, its depth, its table key
(`name@sha12`, the weights'), and where a study keeps the teachers it fine-tunes. Looked up, never
trained here: the sweep fine-tunes (`sweep.resolve_teacher`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hskcache.errors import TeacherError
from hskcache.tasks import get_task
from hskcache.teacher import default_teacher_path, load_teacher
from hsktrain.study.grid import WORK, Grid
from hsktrain.study.runs import TaskRef

TEACHERS = "teachers"  # under a study's work folder: one fine-tuned teacher per task
TUNED = "teacher.json"  # beside a fine-tuned teacher's best/: written last, so it marks one done


@dataclass
class TeacherRef:
    path: str | None  # the folder caches are built from (None: not fine-tuned yet)
    key: str | None  # "name@sha12": the table's teacher column
    depth: int


def base_teacher(grid: Grid) -> str:
    return grid.teacher or str(default_teacher_path())


def teacher_depth(path: str) -> int:
    """The teacher's layer count, from its config alone (no weights loaded).

    Raises:
        TeacherError: not a model folder or name; a missing folder another study fine-tunes
            names the command that makes it.
    """
    study = finetuning_study(path)
    if study is not None and not Path(path).exists():
        config = study / "study.toml"
        how = f"--config {config}" if config.is_file() else f"--study {study} ..."
        raise TeacherError(
            f"teacher {path}: no such folder; the study {study} fine-tunes it: "
            f"hsktrain sweep {how} --prepare"
        )
    try:
        # lazy: transformers takes seconds to import; commands that load no model skip it
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(path, trust_remote_code=False).num_hidden_layers
    except (OSError, ValueError) as e:
        raise TeacherError(f"teacher {path}: cannot read its config ({e})") from e


def teacher_name(path: str, finetuned: bool) -> str:
    """A short, readable name: the folder's, or its parent's for `model`, `best`, `last`."""
    p = Path(path)
    name = p.parent.name if p.name in ("model", "best", "last") else p.name
    return f"{name}+ft" if finetuned else name


def teacher_key(path: str, task: str, name: str) -> str:
    """`name@sha12`, the sha being the weights' as `hskcache build` records them (a head the
    checkpoint lacks is seeded as a build seeds it)."""
    num_labels = get_task(task).num_labels
    sha = load_teacher(path, num_labels, "cpu", "float32", 0).weights_sha256
    return f"{name}@{sha[:12]}"


def finetuned_dir(grid: Grid, task: TaskRef, base: str) -> Path:
    return grid.work / TEACHERS / f"{task.name}-{teacher_name(base, False)}"


def finetuning_study(path: str) -> Path | None:
    """The study whose own work folder holds `path` as a fine-tuned teacher (the inverse of
    `finetuned_dir` for a grid without `workdir`), so a study reusing another's teacher can
    name the study that makes it; None for any other path."""
    parts = Path(path).parts
    if TEACHERS not in parts:
        return None
    i = parts.index(TEACHERS)
    if i < 2 or parts[i - 1] != WORK:
        return None
    return Path(*parts[: i - 1])
