"""The study grid of `hsktrain sweep`: settings from flags or a TOML file, checked.

Every problem of a grid is reported at once (unknown keys, wrong types, bad values, a [fit]
option the sweep sets itself, a bad [targets]). Its expansion into runs is `runs.py`'s; the
published anchors a report reads beside it are `anchors.py`'s.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from hskcache.config import matches, read_toml, type_name
from hskcache.errors import ConfigError
from hskcache.hsk import (
    LENGTH_STRATEGIES,
    WIDTH_STRATEGIES,
    parse_hsk,
)
from hskcache.shapes import DEFAULT_STUDENT
from hsktrain.config import (
    FINETUNE_EPOCHS,
    FINETUNE_LR,
    FitConfig,
    student_problems,
)
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
    # [targets] describe the whole study (the report judges them), so its arm is checked
    # against the file's configs: `--configs full` runs one arm of a study whose target is another
    file_configs = values.get("configs", list(CONFIGS))
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
        p = grid_problems(grid) + targets_problems(grid.targets, file_configs)
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
    """Every bad value of a well-typed grid, named (an empty list: the grid is fine); its
    [targets] are the study file's, checked by `load_grid` against the file's configs."""
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
