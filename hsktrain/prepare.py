"""What a fit runs on, resolved once: rows (a cache, or raw data tokenized here), the student
and its projection, the targets (read from the cache, computed by a live teacher, or labels
only), the stages and the dev rows. `hsktrain fit` calls `prepare`; `hsktrain bench` times the
same `Run`.

Offline runs never load the teacher: the tokenizer and student init come from the cache's kit
(or `--init-from`), checked against the cache's tokenizer hash and max length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from hskcache.data import labelled_mask
from hskcache.errors import (
    CacheMismatchError,
    ConfigError,
    DataFormatError,
)
from hskcache.hsk import hsk_name
from hskcache.importance import (
    CALIBRATION_BATCH,
    CALIBRATION_ROWS,
    activation_ranking,
    calibration_batches,
    calibration_rows,
    first_rows,
)
from hskcache.reader import Cache, open_cache
from hskcache.targets import Batch, plan_selection
from hskcache.tasks import TASKS
from hskcache.teacher import (
    ClsScoreProbe,
    check_max_length,
    default_teacher_path,
    load_teacher,
)
from hskcache.verify import require_sound
from hsktrain import batch as batches
from hsktrain.config import DEFAULTS, PAPER_HSK_EPOCHS, FitConfig
from hsktrain.loader import ChunkShuffleLoader
from hsktrain.projection import fit_projection, projection_for, saved_projection
from hsktrain.rows import encode_split, labelled_rows
from hsktrain.students import build_student, check_vocab, student_from_cache
from hsktrain.tokenizer import check_tokens, tokenizer_for


@dataclass
class Stage:
    name: str  # hsk | pred | joint | ce
    epochs: int
    lr: float


@dataclass
class Run:
    """Everything a fit needs, resolved once."""

    model: nn.Module
    proj: nn.Module
    tokenizer: object
    loader: ChunkShuffleLoader
    make_batch: object  # rows -> Batch
    stages: list[Stage]
    task: str
    regression: bool
    dev: object | None  # ArraySource of dev rows
    teacher_width: int
    record: dict  # resolved config + provenance written into every output
    general: bool = False  # a task-agnostic cache: the run writes a general student (encoder)


def stages_for(cfg: FitConfig, task: str) -> list[Stage]:
    hsk_epochs = PAPER_HSK_EPOCHS.get(task, 10) if cfg.hsk_epochs is None else cfg.hsk_epochs
    return {
        "two-stage": [
            Stage("hsk", hsk_epochs, cfg.hsk_lr),
            Stage("pred", cfg.pred_epochs, cfg.pred_lr),
        ],
        "joint": [Stage("joint", cfg.pred_epochs, cfg.pred_lr)],
        "hsk": [Stage("hsk", hsk_epochs, cfg.hsk_lr)],
        "pred": [Stage("pred", cfg.pred_epochs, cfg.pred_lr)],
        "ce": [Stage("ce", cfg.pred_epochs, cfg.pred_lr)],
    }[cfg.mode]


@dataclass
class FitRows:
    """Where a fit's rows come from, and what they say about the task."""

    source: object  # a `Cache`, or tokenized rows in memory (`ArraySource`)
    cache: Cache | None  # the cache, when the rows come from one
    tokenizer: object
    init_from: str | None  # None: tokenizer and student init come from the cache's kit
    max_length: int
    task: str
    regression: bool
    label_names: tuple[str, ...] | None
    class_names: tuple[str, ...] | None

    @property
    def info(self):
        return None if self.cache is None else self.cache.info

    @property
    def num_labels(self) -> int:
        # a task-agnostic cache trains a general student: its one-label head is never trained
        return 1 if self.regression or not self.label_names else len(self.label_names)


def prepare(cfg: FitConfig) -> Run:
    """Open the rows, check they fit the student, build student, projection and targets."""
    r = open_rows(cfg)
    model, init_info = make_student(cfg, r)
    make, proj, teacher_width = make_targets(cfg, r, model, init_info)
    info = r.info
    record = {
        # an in-memory dataset is recorded by its type, not copied into the record
        "config": cfg.record(),
        "student_init": init_info,
        "task": r.task,
        "max_length": r.max_length,
        "cache_identity": info.identity if info else None,
        "cache_content": info.content if info else None,
    }
    loader = ChunkShuffleLoader(
        r.source, cfg.batch_size, cfg.seed, cfg.buffer_chunks, group_by_length=cfg.group_by_length
    )
    return Run(
        model,
        proj.to(cfg.device),
        r.tokenizer,
        loader,
        make,
        stages_for(cfg, r.task),
        r.task,
        r.regression,
        dev_rows(cfg, r),
        teacher_width,
        record,
        info is not None and info.data.task_agnostic,
    )


def open_rows(cfg: FitConfig) -> FitRows:
    """The rows: a cache (offline, or its labelled rows for `ce`) or raw data, checked."""
    if cfg.cache is None:
        init_from = cfg.init_from or cfg.online_teacher or str(default_teacher_path())
        tokenizer = tokenizer_for(init_from)
        source, ex, max_length = encode_split(
            cfg.data,
            cfg.task,
            cfg.split,
            cfg.limit,
            tokenizer,
            cfg.max_length,
            cfg.chunk_rows,
            cfg.columns,
        )
        regression = ex.label_names is None
        return FitRows(
            source,
            None,
            tokenizer,
            init_from,
            max_length,
            ex.task.name,
            regression,
            ex.label_names,
            ex.class_names,
        )
    if cfg.verify:
        require_sound(cfg.cache, cfg.local_cache, cfg.local_cache_size)
    # a remote cache is read through a local copy of its shards: later epochs stay local
    cache = open_cache(cfg.cache, True, cfg.local_cache, cfg.local_cache_size)
    info, init_from = cache.info, cfg.init_from
    tokenizer = tokenizer_for(cache if init_from is None else init_from)
    check_tokens(cfg, cache, tokenizer, init_from or f"stored in {cfg.cache}")
    _check_rows(cfg, info)
    source = cache
    if cfg.mode == "ce" and info.counts.num_unlabelled:  # CE reads gold labels only
        source = labelled_rows(cache, cfg.chunk_rows or DEFAULTS["chunk_rows"])
    d = info.data
    return FitRows(
        source,
        cache,
        tokenizer,
        init_from,
        info.max_length,
        d.task,
        d.regression,
        d.label_names,
        d.class_names,
    )


def make_student(cfg: FitConfig, r: FitRows) -> tuple[nn.Module, dict]:
    """The student, named classes and on the device, checked against the rows' vocabulary and
    the cache's student depth; and how it was initialised."""
    info = r.info
    if r.init_from is None:  # no teacher needed: the init (or its config) is in the cache
        model, init_info = student_from_cache(
            r.cache, cfg.init, cfg.student, r.num_labels, cfg.seed, cfg.select, cfg.layer_choice
        )
    else:
        ranking = None
        if cfg.init == "select" and cfg.select == "importance":
            ranking = _ranking(r.init_from, r.source, r.num_labels, cfg.seed)
        layers = (cfg.layer_choice, info.selection.l_top if info else cfg.l_top)
        model, init_info = build_student(
            cfg.init, r.init_from, cfg.student, r.num_labels, cfg.seed, ranking, layers
        )
    check_vocab(model.config, r.tokenizer, r.init_from or f"{cfg.cache} (its stored student)")
    if r.class_names is not None:  # what the saved model's pipeline prints: `positive`
        name_classes(model.config, r.class_names)
    model.to(cfg.device)
    n_student = model.config.num_hidden_layers
    distils = cfg.mode in ("two-stage", "joint", "hsk")
    if info is not None and distils and info.selection.student_layers != n_student:
        raise CacheMismatchError(
            "selection.student_layers",
            n_student,
            info.selection.student_layers,
            "rebuild the cache with --student-layers matching the student",
        )
    return model, init_info


def make_targets(cfg: FitConfig, r: FitRows, model: nn.Module, init_info: dict):
    """(rows -> Batch, the projection, the teacher's width): targets read from the cache,
    computed live by the teacher, or none (labels only). `init_info` gains the projection's
    source when a general student brings its own, or what `--proj-init fitted` solved."""
    info = r.info
    teacher_width = info.teacher.hidden_size if info else model.config.hidden_size
    regression = r.regression
    if info is not None and r.source is not r.cache:  # the labelled rows, in memory
        make = lambda rows: batches.inputs(rows, cfg.device, regression)  # noqa: E731
    elif info is not None:
        manifest = r.cache.manifest
        make = lambda rows: batches.from_cache(rows, manifest, cfg.device)  # noqa: E731
    elif cfg.online_teacher is not None:
        n_student = model.config.num_hidden_layers
        make, teacher_width = _online(cfg, r.num_labels, r.max_length, n_student, regression)
    else:
        make = lambda rows: batches.inputs(rows, cfg.device, regression)  # noqa: E731
    teacher_dims = info is not None or cfg.online_teacher is not None
    proj = projection_for(model, init_info, teacher_width, cfg.proj_init, cfg.seed, teacher_dims)
    if cfg.init == "pretrained" and teacher_dims:
        saved = saved_projection(r.init_from, model.config.hidden_size, teacher_width)
        if saved is not None:  # a general student's own projection (students.saved_projection)
            proj = saved
            init_info["projection"] = f"{r.init_from} (saved)"
    if cfg.proj_init == "fitted" and teacher_dims and cfg.mode in ("two-stage", "joint", "hsk"):
        fitted = fit_projection(model, proj, calibration(r.source, make), teacher_width)
        proj, init_info["projection"] = fitted.proj, fitted.record()
    return make, proj, teacher_width


def calibration(source, make) -> Iterator[Batch]:
    """The source's first `CALIBRATION_ROWS` rows in stored order, as batches of
    `CALIBRATION_BATCH` made by `make` (the run's own targets): the sample `--proj-init fitted`
    solves on, the same rows `--select importance` ranks on."""
    rows = first_rows(source, CALIBRATION_ROWS)
    n = len(next(iter(rows.values())))
    for lo in range(0, n, CALIBRATION_BATCH):
        yield make({k: v[lo : lo + CALIBRATION_BATCH] for k, v in rows.items()})


def dev_rows(cfg: FitConfig, r: FitRows):
    """The dev split, tokenized as the training rows are; refused when any row is unlabelled."""
    if cfg.dev_data is None:
        return None
    dev, _, _ = encode_split(
        cfg.dev_data,
        r.task if r.task in TASKS else None,  # a table's rows ("custom") name no GLUE task
        cfg.dev_split,
        cfg.dev_limit,
        r.tokenizer,
        r.max_length,
        cfg.chunk_rows,
        cfg.columns,
    )
    if unlabelled := int((~labelled_mask(dev.arrays["labels"])).sum()):
        raise DataFormatError(
            cfg.dev_data,
            f"{unlabelled} of {dev.num_examples} dev rows have no label (a test split, or "
            "text without a label column?) and cannot be scored; pass a labelled "
            "--dev-data, or none",
        )
    return dev


def name_classes(config, names: tuple[str, ...]) -> None:
    """Set a model config's `id2label` / `label2id` to the task's class names (one a class:
    the student was built with `len(names)` labels)."""
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}


def _check_rows(cfg: FitConfig, info) -> None:
    """Refuse a mode the cache's rows cannot train: a task-agnostic cache holds HSK only (no
    logits, no labels), and CE needs some gold labels.

    Raises:
        ConfigError: naming the mode to use or the cache to build.
    """
    if info.data.task_agnostic and cfg.mode != "hsk":
        raise ConfigError(
            f"{cfg.cache}: a task-agnostic cache (unlabelled rows, no task) holds HSK only, no "
            f"logits or labels, so --mode {cfg.mode} has nothing to train on; use --mode hsk "
            "(a general student), or build the cache with --task for the teacher's logits"
        )
    if info.data.task_agnostic and cfg.dev_data is not None:
        raise ConfigError(
            f"{cfg.cache}: a task-agnostic cache trains a general student, which has no task "
            "head to score on --dev-data; drop --dev-data (score the task students started from "
            "it with --init pretrained)"
        )
    if cfg.mode == "ce" and info.counts.num_unlabelled == info.counts.num_examples:
        raise ConfigError(
            f"{cfg.cache}: every row is unlabelled, so --mode ce has no gold label to train on; "
            "use a KD mode (two-stage, joint, pred, hsk) or a cache with labelled rows"
        )


def _ranking(teacher_dir: str, source, num_labels: int, seed: int):
    """The teacher's importance ranking on the run's first rows, exactly as `hskcache build
    --select importance` ranks on the cache's (the same rows, batches, device and dtype)."""
    teacher = load_teacher(teacher_dir, num_labels, "cpu", "float32", seed)
    rows = calibration_rows(source, CALIBRATION_ROWS)
    return activation_ranking(teacher.model, calibration_batches(teacher.model, rows))


def _online(cfg: FitConfig, num_labels: int, max_length: int, n_student: int, regression: bool):
    """Load the live teacher and return (rows -> Batch, teacher width) for online KD."""
    teacher = load_teacher(cfg.online_teacher, num_labels, cfg.device, "float32", cfg.seed, cfg.amp)
    check_max_length(teacher, max_length)
    sel = cfg.online_selection(n_student)
    threshold = None
    if cfg.batch_threshold:  # select full width; the threshold prunes per batch
        h = sel.parse()
        threshold = h.width
        sel.hsk = hsk_name(h.layers, h.tokens, 1.0)
    plan = plan_selection(
        sel, teacher.config.num_hidden_layers, teacher.config.hidden_size, max_length
    )
    scorers = {la["score_attention"] for la in plan.layers} - {None}
    probe = ClsScoreProbe(teacher.model, scorers) if scorers else None

    def make(rows):
        return batches.from_teacher(rows, teacher, probe, plan, cfg.device, regression, threshold)

    return make, teacher.config.hidden_size
