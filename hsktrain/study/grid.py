"""The study grid of `hsktrain sweep`: settings from flags or a TOML file, and their expansion.

Every problem of a grid is reported at once (unknown keys, wrong types, bad values). The
expansion is a pure function of (grid, tasks, teacher depth) into runs; an arm several axes ask
for (the depth axis's all-layers point is `full`, as are K = all and p = 1) runs once. The
study's extra teacher-labelled rows (`augment`, `labelled`) are one more axis (`extra_rows`):
every KD arm with and without them; the CE-only arm reads gold labels alone, so it runs once.
"""

from __future__ import annotations

import functools
import hashlib
import re
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from hskcache.config import matches, read_toml, type_name
from hskcache.errors import ConfigError
from hskcache.hsk import (
    LENGTH_STRATEGIES,
    WIDTH_STRATEGIES,
    default_l_top,
    depth_pairs,
    hsk_name,
    parse_hsk,
)
from hskcache.shapes import DEFAULT_STUDENT, student_shape
from hskcache.tasks import get_task
from hsktrain.config import (
    FINETUNE_EPOCHS,
    FINETUNE_LR,
    PAPER_HSK_EPOCHS,
    FitConfig,
    student_problems,
)
from hsktrain.glue import find_task_data
from hsktrain.metrics import METRICS

BASELINES = ("ce", "pred")
CONFIGS = ("full", "1l_10t_0.1h")  # a grid's HSK configs when it names none
# a study's [targets]: `arm` (an HSK config) must score at least each bound, in points of the
# task's main metric (or of `metric`) as fractions (0.05 = 5 points) or as a share of the
# teacher (of_teacher)
TARGETS = {
    "of_teacher": ">= {share} of the teacher's",
    "under_teacher": ">= the teacher's - {points}",
    "over_ce": ">= CE-only + {points}",
    "within_full": "within {points} of full HSK",
}
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
# The width axis's one online strategy: the paper's per-batch magnitude threshold (a cache holds
# a fixed number of dims per token, so these arms run `fit --online-teacher --batch-threshold`).
THRESHOLD = "threshold"
GRID_WIDTH_STRATEGIES = (*WIDTH_STRATEGIES, THRESHOLD)
TABLES = ("depth", "length", "width")  # TOML tables whose keys become `<table>_<key>` fields
# FitConfig fields the sweep sets itself: not settable through [fit].
SWEEP_SETS = (
    "out cache online_teacher data task split limit dev_data dev_split dev_limit student mode "
    "hsk_epochs pred_epochs seed resume max_steps hsk length width_strategy score_layer l_top "
    "teacher_layers batch_threshold chunk_rows"
).split()


WORK = "work"  # a study's own work folder, unless `workdir` names another


@dataclass
class Grid:
    """A study: what to train and compare. Lists left empty add no arms."""

    study: str  # folder: results.csv, builds.csv, report; caches and runs under work/
    tasks: list[str]
    # where bare task names (MRPC, SST-2) are looked up; None: $GLUE, ../shared/data/glue, then
    # the Hugging Face hub's GLUE (hsktrain.glue)
    glue: str | None = None
    teacher: str | None = None  # a fine-tuned folder; with finetune, the model to fine-tune
    finetune: bool = False  # fine-tune `teacher` once per task (kept under work/teachers)
    finetune_epochs: int = FINETUNE_EPOCHS
    finetune_lr: float = FINETUNE_LR
    student: str = DEFAULT_STUDENT
    seeds: list[int] = field(default_factory=lambda: [0])
    hsk_epochs: int | None = None  # None: the paper's per task
    pred_epochs: int = 5
    ce_lr: float | None = None  # the CE-only arm's lr (default: fit's pred_lr)
    limit: int | None = None  # training rows per task...
    limits: dict[str, int] = field(default_factory=dict)  # ...or per task, by its name
    dev_limit: int | None = None
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    configs: list[str] = field(default_factory=lambda: list(CONFIGS))
    joint: list[str] = field(default_factory=list)
    depth_layers: list[int] = field(default_factory=list)
    depth_l_top: list[int] = field(default_factory=list)  # empty: the default l_top
    length_tokens: list[int | str] = field(default_factory=list)  # "all": every token
    length_strategies: list[str] = field(default_factory=lambda: list(LENGTH_STRATEGIES))
    width_fractions: list[float] = field(default_factory=list)
    width_strategies: list[str] = field(default_factory=lambda: list(WIDTH_STRATEGIES))
    # extra teacher-labelled training rows: N augmented variants of every row (build --augment)
    augment: int = 0
    # only the first N training rows keep gold labels, the rest (to `limit`) are unlabelled
    labelled: int | None = None
    # the arms with the extra rows (true), without them (false), or both; without them and with
    # `labelled`, an arm trains on the N labelled rows alone
    extra_rows: list[bool] = field(default_factory=lambda: [True])
    chunk_rows: int = 128  # the same for every cache: every arm sees the same batches
    keep_checkpoints: bool = False  # default: a finished run keeps metrics and config only
    workdir: str | None = None  # default: STUDY/work
    fit: dict = field(default_factory=dict)  # any other FitConfig option, for every run
    # what `hsktrain report` judges (TARGETS): one HSK config + prediction against the teacher,
    # CE-only and full HSK; the sweep itself ignores them
    targets: dict = field(default_factory=dict)
    # a TOML file of published students (ANCHOR_KEYS) the report sets the arms beside, relative
    # to the study file: one file for every study of a task; the sweep ignores it
    anchors: str | None = None

    @property
    def work(self) -> Path:
        return Path(self.workdir) if self.workdir else Path(self.study) / WORK


def load_grid(path: str | None, flags: dict, fit: dict | None = None) -> Grid:
    """A Grid from a TOML file overlaid with the flags given (`fit`: options overlaid on its
    [fit] table, as `--device`); every problem in one error.

    Raises:
        ConfigError: unreadable file, unknown keys, wrong types, bad values, all named.
        DataFormatError: a file that is not UTF-8, naming its line.
    """
    values: dict = {}
    if path:
        for k, v in read_toml(path, "the study config").items():
            if k in TABLES and isinstance(v, dict):
                values |= {f"{k}_{kk}": vv for kk, vv in v.items()}
            else:
                values[k] = v
    values |= {k: v for k, v in flags.items() if v is not None}
    if fit:
        values["fit"] = {**values.get("fit", {}), **fit}
    hints = typing.get_type_hints(Grid)
    p = [f"unknown key '{_dotted(k)}'" for k in values if k not in hints]
    p += [
        f"{_dotted(k)} = {v!r} is not {type_name(hints[k])}"
        for k, v in values.items()
        if k in hints and not matches(v, hints[k])
    ]
    p += [f"missing '{k}' (--{k.replace('_', '-')})" for k in ("study", "tasks") if k not in values]
    if not p:
        grid = Grid(**values)
        p = grid_problems(grid)
    if p:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{'; '.join(p)}")
    return grid


def read_targets(path: str) -> dict:
    """A study file's [targets] alone, checked (what `hsktrain report` judges): the rest of the
    file is the sweep's, and a setting only the sweep's machine has (`[fit] device = "cuda"`)
    must not stop a report elsewhere.

    Raises:
        ConfigError: an unreadable file or a bad [targets], every problem named.
    """
    values = read_toml(path, "the study config")
    targets = values.get("targets", {})
    if not isinstance(targets, dict):
        raise ConfigError(f"{path}: targets must be a table ([targets])")
    configs = values.get("configs", list(CONFIGS))
    if p := targets_problems(targets, configs):
        raise ConfigError(f"{path}: {'; '.join(p)}")
    return targets


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


def targets_problems(t: dict, configs: list[str]) -> list[str]:
    """[targets]: known bounds, each a fraction in (0, 1], an `arm` among the configs and, if
    set, a `metric` a run scores."""
    if not t:
        return []
    p = [f"unknown key 'targets.{k}'" for k in t if k not in ("arm", "metric", *TARGETS)]
    if "metric" in t and t["metric"] not in METRICS:
        p.append(f"targets.metric {t['metric']!r} must be one of {', '.join(METRICS)}")
    p += [
        f"targets.{k} = {v!r} must be a number in (0, 1]"
        for k, v in t.items()
        if k in TARGETS and (isinstance(v, bool) or not (isinstance(v, int | float) and 0 < v <= 1))
    ]
    if t.get("arm") not in configs:
        p.append(f"targets.arm {t.get('arm')!r} must be one of configs {configs}")
    if not TARGETS.keys() & t.keys():
        p.append(f"targets: set at least one of {', '.join(TARGETS)}")
    return p


def _extra_rows_problems(g: Grid) -> list[str]:
    """An `extra_rows` axis with nothing to vary, a `labelled` count that leaves no row
    unlabelled, and online arms asked to train on rows only a cache holds."""
    p, some = [], bool(g.augment) or g.labelled is not None
    if not some and False in g.extra_rows and True in g.extra_rows:
        p.append("extra_rows = [false, true] needs augment or labelled (the extra rows) set")
    if g.labelled is not None:
        p += [
            f"labelled {g.labelled} >= {where} {n}: no row is left unlabelled; lower labelled "
            "or raise the limit"
            for where, n in [("limit", g.limit), *((f"limits.{k}", v) for k, v in g.limits.items())]
            if n is not None and g.labelled >= n
        ]
    if some and True in g.extra_rows and g.width_fractions and THRESHOLD in g.width_strategies:
        p.append(
            f"width.strategies '{THRESHOLD}' trains online, without a cache's extra rows; "
            "drop it or set extra_rows = [false]"
        )
    return p


def _dotted(key: str) -> str:
    table, _, rest = key.partition("_")
    return f"{table}.{rest}" if table in TABLES and rest else key


def grid_problems(g: Grid) -> list[str]:
    """Every bad value of a well-typed grid, named (an empty list: the grid is fine)."""
    p = []
    positive = "finetune_epochs pred_epochs hsk_epochs limit dev_limit chunk_rows labelled".split()
    p += [f"{k} must be >= 1" for k in positive if getattr(g, k) is not None and getattr(g, k) < 1]
    p += [f"limits.{k} must be >= 1" for k, v in g.limits.items() if v < 1]
    p += [f"{k} must be > 0" for k in ("finetune_lr", "ce_lr") if (getattr(g, k) or 1) <= 0]
    p += [f"baseline '{b}' is not one of {BASELINES}" for b in g.baselines if b not in BASELINES]
    p += [
        f"no {k}: list at least one" for k in ("seeds", "tasks", "extra_rows") if not getattr(g, k)
    ]
    p += ["augment must be >= 0 (variants per row)"] * (g.augment < 0)
    p += _extra_rows_problems(g)
    for name in g.configs + g.joint:
        try:
            parse_hsk(name)
        except ConfigError as e:
            p.append(str(e))
    p += [f"depth.layers {n} must be >= 1" for n in g.depth_layers if n < 1]
    p += [f"depth.l_top {n} must be >= 1" for n in g.depth_l_top if n < 1]
    p += [
        f"length.tokens {k!r} must be a count >= 1 or 'all'"
        for k in g.length_tokens
        if not (k == "all" or (isinstance(k, int) and k >= 1))
    ]
    p += [f"width.fractions {w} must be in (0, 1]" for w in g.width_fractions if not 0 < w <= 1]
    p += [
        f"length.strategies '{s}' is not one of {LENGTH_STRATEGIES}"
        for s in g.length_strategies
        if s not in LENGTH_STRATEGIES
    ]
    p += [
        f"width.strategies '{s}' is not one of {GRID_WIDTH_STRATEGIES}"
        for s in g.width_strategies
        if s not in GRID_WIDTH_STRATEGIES
    ]

    p += targets_problems(g.targets, g.configs)
    p += student_problems(g.student)
    names = {f.name for f in fields(FitConfig)}
    bad = [f"fit.{k} is set by the sweep itself" for k in g.fit if k in SWEEP_SETS]
    bad += [f"unknown key 'fit.{k}'" for k in g.fit if k not in names]
    p += bad
    if not bad:
        try:
            FitConfig(out="run", cache="cache", **g.fit).validate()
        except ConfigError as e:
            p.append(f"fit: {e}")
    return p


# --- expansion (pure) -------------------------------------------------------------------------


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


LIST_FLAGS = {
    "tasks": str,
    "seeds": int,
    "baselines": str,
    "configs": str,
    "joint": str,
    "depth_layers": int,
    "depth_l_top": int,
    "length_tokens": int,
    "length_strategies": str,
    "width_fractions": float,
    "width_strategies": str,
    "extra_rows": bool,
}


def parse_shard(text: str) -> tuple[int, int]:
    """`--shard I/N` as (I, N), 0 <= I < N.

    Raises:
        ConfigError: not two integers so related.
    """
    i, _, n = text.partition("/")
    if not (i.strip().isdigit() and n.strip().isdigit()) or not int(i) < int(n):
        raise ConfigError(f"--shard '{text}': give I/N with 0 <= I < N (e.g. 0/4 ... 3/4)")
    return int(i), int(n)


def parse_flags(flags: dict) -> dict:
    """Comma-separated list flags (`--seeds 0,1,2`) as lists; every bad item named at once.

    Raises:
        ConfigError: items that are not numbers where numbers are expected.
    """
    out, p = dict(flags), []
    for key, kind in LIST_FLAGS.items():
        text = flags.get(key)
        if text is None or isinstance(text, list):
            continue
        items = []
        for item in (x.strip() for x in str(text).split(",") if x.strip()):
            try:
                if kind is bool:
                    items.append(_flag_bool(item))
                else:
                    items.append(item if key == "length_tokens" and item == "all" else kind(item))
            except ValueError:
                what = {int: "an integer", bool: "true or false"}.get(kind, "a number")
                p.append(f"--{key.replace('_', '-')}: '{item}' is not {what}")
        out[key] = items
    if p:
        raise ConfigError("; ".join(p))
    return out


def _flag_bool(text: str) -> bool:
    """`true` / `false` (any case) as a bool; ValueError otherwise."""
    if text.lower() not in ("true", "false"):
        raise ValueError(text)
    return text.lower() == "true"
