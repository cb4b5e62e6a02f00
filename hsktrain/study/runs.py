"""A grid's runs: its tasks resolved to their data, its arms expanded (a pure function of grid,
tasks and teacher depth), each run's budget and the fit recipe its results row records.

An arm several axes ask for (the depth axis's all-layers point is `full`, as are K = all and
p = 1) runs once. The study's extra teacher-labelled rows (`augment`, `labelled`) are one more
axis (`extra_rows`): every KD arm with and without them; the CE-only arm reads gold labels alone,
so it runs once.
"""

from __future__ import annotations

import functools
import hashlib
import re
import typing
from dataclasses import dataclass, fields, replace
from pathlib import Path

from hskcache.errors import ConfigError
from hskcache.hsk import default_l_top, depth_pairs, hsk_name, parse_hsk
from hskcache.shapes import student_shape
from hskcache.tasks import get_task
from hsktrain.config import PAPER_HSK_EPOCHS, FitConfig
from hsktrain.glue import find_task_data
from hsktrain.study.grid import THRESHOLD, Grid


@dataclass(frozen=True)
class TaskRef:
    name: str  # the task's short name (mrpc, sst2, ...)
    folder: str  # GLUE folder with train.tsv and dev.tsv, or "glue": the hub's
    max_length: int


@dataclass(frozen=True)
class Rows:
    """An arm's training rows beyond the task's own labelled ones (none: the default)."""

    augment: int = 0  # variants per row, teacher-labelled only
    labelled: int | None = None  # gold labels on the first N rows only

    @property
    def name(self) -> str:
        """`augment4`, `labelled8000`, both `+`-joined, or "" for none: the config's suffix."""
        parts = [f"augment{self.augment}"] * bool(self.augment)
        parts += [f"labelled{self.labelled}"] * (self.labelled is not None)
        return "+".join(parts)


ROWS_SUFFIX = re.compile(r"\+(augment|labelled)(\d+)")


def config_rows(config: str) -> Rows:
    """The rows a table's `config` cell names (`pred+augment4` -> Rows(augment=4))."""
    values = {k: int(v) for k, v in ROWS_SUFFIX.findall(config)}
    return Rows(values.get("augment", 0), values.get("labelled"))


def plain_config(config: str) -> str:
    """A `config` cell without its extra rows (`pred+labelled8000` -> `pred`)."""
    return ROWS_SUFFIX.sub("", config)


def study_rows(grid: Grid, extra: bool) -> Rows:
    """The rows of the study's arms with (`extra`) or without its extra rows."""
    return Rows(grid.augment, grid.labelled) if extra else Rows()


def rows_limit(grid: Grid, task: TaskRef, rows: Rows) -> int | None:
    """The training rows read from the task's file: without the extra rows of a study with
    `labelled`, only the N labelled ones (the task limit otherwise)."""
    limit = task_limit(grid, task)
    if grid.labelled is None or rows.labelled is not None:
        return limit
    return grid.labelled if limit is None else min(grid.labelled, limit)


@dataclass(frozen=True)
class Arm:
    """One trained configuration. For HSK arms, '-' marks a strategy that does not apply:
    length when every token is kept, width strategy at full width."""

    kind: str  # hsk | pred | ce
    axis: str = "baseline"  # config | joint | depth | length | width | baseline, '+'-joined
    hsk: str = ""  # the cache's HSK config name
    length: str = "-"
    width_strategy: str = "-"
    l_top: int | None = None
    layers: int = 0
    tokens: int = 0
    width: float = 0.0
    rows: Rows = Rows()

    @property
    def online(self) -> bool:
        """Trained with the teacher live (the per-batch threshold), not from a cache."""
        return self.width_strategy == THRESHOLD

    @property
    def config(self) -> str:
        """The table's name of the arm: kind or HSK selection, `+augment4` etc. for its rows."""
        name = self.kind
        if self.kind == "hsk":
            name = f"{self.hsk}/{self.length}/{self.width_strategy}/l_top{self.l_top}"
        return f"{name}+{self.rows.name}" if self.rows.name else name


@dataclass(frozen=True)
class RunSpec:
    task: TaskRef
    arm: Arm
    seed: int

    @property
    def config(self) -> str:
        return self.arm.config


def hsk_arm(
    axis: str,
    layers: int,
    tokens: int,
    width: float,
    length: str,
    wstrat: str,
    l_top: int,
    all_layers: int,
    all_tokens: int,
) -> Arm:
    """An HSK arm in canonical form: every token -> length '-', full width -> strategy '-',
    and all three at their maximum -> `full`, so equal selections are one arm."""
    tokens = min(tokens, all_tokens)
    length = "-" if tokens == all_tokens else length
    wstrat = "-" if width == 1 else wstrat
    name = hsk_name(layers, tokens, width, all_layers, all_tokens)
    return Arm("hsk", axis, name, length, wstrat, l_top, layers, tokens, width)


def expand_grid(grid: Grid, tasks: list[TaskRef], n_teacher: int) -> list[RunSpec]:
    """Every run of the grid, seed-major (a partial study has every arm at its first seeds),
    an arm asked for by several axes once, its axes '+'-joined.

    Args:
        grid: the study.
        tasks: the grid's tasks, resolved (`resolve_tasks`).
        n_teacher: the teacher's layer count (the default l_top and its range).

    Raises:
        ConfigError: layer counts above the student's, l_top outside the teacher, two student
            layers on one teacher state; all named.
    """
    n_student = student_shape(grid.student)["num_hidden_layers"]
    all_layers, l_top0 = n_student + 1, default_l_top(n_teacher)
    p = [
        f"depth.layers {n}: a {n_student}-layer student has {all_layers} hidden states"
        for n in grid.depth_layers
        if n > all_layers
    ]
    p += [
        f"depth.l_top {t}: the teacher has {n_teacher} layers"
        for t in grid.depth_l_top
        if t > n_teacher
    ]
    for name in grid.configs + grid.joint:
        h = parse_hsk(name)
        if (h.layers or 0) > all_layers:
            p.append(f"'{name}' keeps {h.layers} layers; the student has {all_layers} states")
    if p:
        raise ConfigError("; ".join(p))
    runs: dict[tuple, RunSpec] = {}
    for seed in grid.seeds:
        for task in tasks:
            T = task.max_length
            arms = [Arm(b) for b in grid.baselines]
            for axis, names in (("config", grid.configs), ("joint", grid.joint)):
                for name in names:
                    h = parse_hsk(name)
                    sizes = (h.layers or all_layers, h.tokens or T, h.width)
                    strategies = (h.length, h.width_strategy, l_top0)
                    arms.append(hsk_arm(axis, *sizes, *strategies, all_layers, T))
            for lt in grid.depth_l_top or [l_top0]:
                for n in grid.depth_layers:
                    arms.append(hsk_arm("depth", n, T, 1.0, "left", "-", lt, all_layers, T))
            for s in grid.length_strategies if grid.length_tokens else []:
                for k in grid.length_tokens:
                    k = T if k == "all" else k
                    arm = hsk_arm("length", all_layers, k, 1.0, s, "-", l_top0, all_layers, T)
                    arms.append(arm)
            for s in grid.width_strategies if grid.width_fractions else []:
                for w in grid.width_fractions:
                    arms.append(
                        hsk_arm("width", all_layers, T, w, "left", s, l_top0, all_layers, T)
                    )
            # the CE-only arm reads gold labels alone: the extra rows change nothing for it
            variants = [study_rows(grid, x) for x in dict.fromkeys(grid.extra_rows)]
            arms = [a if a.kind == "ce" else replace(a, rows=r) for r in variants for a in arms]
            for arm in arms:
                key = (task.name, arm.config, seed)
                if key in runs:
                    old = runs[key]
                    axes = old.arm.axis.split("+")
                    if arm.axis not in axes:
                        merged = replace(old.arm, axis="+".join([*axes, arm.axis]))
                        runs[key] = replace(old, arm=merged)
                else:
                    runs[key] = RunSpec(task, arm, seed)
    p = sorted({x for r in runs.values() for x in _shared_states(r.arm, n_student, n_teacher)})
    if p:
        raise ConfigError("; ".join(p))
    return list(runs.values())


def _shared_states(arm: Arm, n_student: int, n_teacher: int) -> list[str]:
    """The arm's refusal by `depth_pairs` when two student layers would share a teacher state
    (a low l_top over a deep student), named with the arm, so a grid lists every such arm."""
    if arm.kind != "hsk":
        return []
    try:
        depth_pairs(n_student, n_teacher, arm.layers, arm.l_top)
    except ConfigError as e:
        return [f"l_top {arm.l_top} ({arm.hsk}): {e}"]
    return []


def resolve_tasks(grid: Grid) -> list[TaskRef]:
    """Each task entry as its data: a folder path as given; a bare name under `grid.glue`, or
    where `hsktrain.glue` finds it (a local folder, else the hub's GLUE) when that is unset.

    Raises:
        ConfigError: every missing folder or unknown task, with what to pass instead.
    """
    refs, p = [], []
    for entry in grid.tasks:
        try:
            data, name = _task_data(grid, entry)
        except ConfigError as e:
            p.append(f"task '{entry}': {e}")
            continue
        max_length = grid.fit.get("max_length") or get_task(name).max_length
        refs.append(TaskRef(name, data, max_length))
    names = [r.name for r in refs]
    p += [f"task '{n}' is listed twice" for n in sorted({n for n in names if names.count(n) > 1})]
    p += [
        f"limits.{k}: not a task's short name (sst2, mrpc, cola, ...)"
        for k in grid.limits
        if not _is_task(k)
    ]
    if p:
        raise ConfigError("; ".join(p))
    return refs


def _task_data(grid: Grid, entry: str) -> tuple[str, str]:
    """(data, task name) of one `tasks` entry; ConfigError says what is missing."""
    folder = Path(entry)
    if not folder.is_dir() and "/" not in entry:  # a bare name
        if grid.glue is None:
            return find_task_data(entry, "pass --glue DIR or the task's folder")
        if not Path(grid.glue).is_dir():
            raise ConfigError(
                f"GLUE folder {grid.glue} not found; pass --glue DIR or give the task's folder path"
            )
        folder = Path(grid.glue) / entry
    if not (folder / "train.tsv").is_file():
        raise ConfigError(f"{folder} has no train.tsv (a GLUE task folder expected)")
    try:
        return str(folder), get_task(folder.name).name
    except ConfigError:
        raise ConfigError(
            f"cannot tell the GLUE task from the folder name '{folder.name}'; name it as GLUE "
            "does (SST-2, MRPC, CoLA, ...)"
        ) from None


def _is_task(name: str) -> bool:
    """A `limits` key may name a task this run leaves out (`--tasks` narrows a study file's
    list, a piece at a time), but not a typo."""
    try:
        return get_task(name).name == name
    except ConfigError:
        return False


def task_limit(grid: Grid, task: TaskRef) -> int | None:
    return grid.limits.get(task.name, grid.limit)


def epochs(grid: Grid, run: RunSpec) -> tuple[int, int]:
    """(HSK epochs, prediction epochs). The budget rule: every arm trains the same number of
    epochs; an arm with no HSK stage (ce, pred) spends all of them in its one stage."""
    h = grid.hsk_epochs or PAPER_HSK_EPOCHS.get(run.task.name, 10)
    return (h, grid.pred_epochs) if run.arm.kind == "hsk" else (0, h + grid.pred_epochs)


# FitConfig fields that shape a run's result, recorded per row: a rerun refuses finished rows
# trained with other values (a changed [fit], ce_lr, or a changed default of `fit`).
RECIPE = (
    "hsk_lr pred_lr temperature hard_weight hsk_weight kept_only weight_decay warmup lr_decay "
    "max_grad_norm batch_size buffer_chunks group_by_length init proj_init amp max_length"
).split()
# Options added later, recorded only when set: rows written before them stay comparable.
RECIPE_IF_SET = ("select", "layer_choice", "init_from")


@functools.cache
def checkpoint_sha(folder: str) -> str:
    """The first 12 hex digits of the sha256 over a checkpoint folder's safetensors files in
    name order: which weights an `--init pretrained` run started from, not only where they lay
    (a student distilled again on another machine is other weights, as a teacher is).

    Raises:
        ConfigError: no checkpoint there.
    """
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ConfigError(
            f"[fit] init_from {folder}: no checkpoint there (no *.safetensors); make that "
            "student first (the study.toml says how)"
        )
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def fit_options(grid: Grid, arm: Arm) -> dict:
    """The `[fit]` options of an arm's runs: the grid's, with `ce_lr` for the CE-only arm."""
    options = dict(grid.fit)
    if arm.kind == "ce" and grid.ce_lr is not None:
        options["pred_lr"] = grid.ce_lr
    return options


def recipe(grid: Grid, arm: Arm) -> str:
    """`key=value` for every RECIPE field of the arm's runs, defaults included; an int given
    for a float option is written as that float (`temperature = 1` is `temperature=1.0`), and
    `init_from` as `PATH@sha12`, its weights (`checkpoint_sha`)."""
    values = {f.name: f.default for f in fields(FitConfig)} | fit_options(grid, arm)
    if values["init_from"] is not None:
        values["init_from"] = f"{values['init_from']}@{checkpoint_sha(values['init_from'])}"
    hints = typing.get_type_hints(FitConfig)
    floats = {k for k in RECIPE if float in (hints[k], *typing.get_args(hints[k]))}
    as_given = lambda k, v: float(v) if k in floats and type(v) is int else v  # noqa: E731
    keys = RECIPE + [k for k in RECIPE_IF_SET if values[k] is not None]
    return " ".join(f"{k}={as_given(k, values[k])}" for k in keys)


def parse_recipe(cell: str) -> dict[str, str]:
    """A results row's `recipe` cell back to {option: value}."""
    return dict(kv.split("=", 1) for kv in cell.split())
