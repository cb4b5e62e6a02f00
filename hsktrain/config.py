"""Typed configs of the `hsktrain` commands (same fields from flags or a TOML file)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import get_args, get_type_hints

from hskcache.config import LAYER_CHOICES, SELECTS, matches, type_name
from hskcache.data import Columns, HFDataset, data_label
from hskcache.devices import amp_problem, check_device
from hskcache.errors import ConfigError, HskError
from hskcache.hsk import SCORE_LAYERS, SELECTION_DEFAULTS, SelectionConfig
from hskcache.shapes import DEFAULT_STUDENT, student_shape
from hskcache.storage.localcache import parse_size
from hskcache.storage.lock import local_path

MODES = ("two-stage", "joint", "hsk", "pred", "ce")
INITS = ("select", "random", "pretrained")  # the student's weights: hsktrain/students.py
PROJ_INITS = ("select", "random", "fitted")  # how the projection starts (projection.py)
LR_DECAYS = ("none", "linear")  # after warmup: constant (the paper's) or linear to 0 per stage
# Stage-1 epochs per task in the paper (section 4); other tasks default to 10.
PAPER_HSK_EPOCHS = {
    "cola": 30,
    "mrpc": 20,
    "sst2": 10,
    "stsb": 20,
    "rte": 20,
    "mnli": 5,
    "qqp": 5,
    "qnli": 5,
}


# Defaults of the fields that apply only to some runs: None in FitConfig means "not given", so
# an option given where it does not apply is refused rather than silently ignored.
DEFAULTS = {
    "split": "train",
    "dev_split": "dev",
    "chunk_rows": 256,
    "hsk": SELECTION_DEFAULTS.hsk,
    "length": SELECTION_DEFAULTS.length,
    "width_strategy": SELECTION_DEFAULTS.width_strategy,
    "score_layer": SELECTION_DEFAULTS.score_layer,
}
ONLINE_ONLY = ("hsk", "length", "width_strategy", "score_layer", "l_top", "teacher_layers")
DATA_ONLY = ("data", "task", "split", "limit")
COLUMNS = ("text_column", "text_pair_column", "label_column")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class FitConfig:
    """`hsktrain fit`: a student from a cache (offline), a live teacher (online) or labels (ce).

    `batch_size` is the global batch: under torchrun each of W processes takes batch_size / W.
    The online selection settings are flat fields (one TOML key and one flag each, None when
    not given); `online_selection` gathers them into a `SelectionConfig`.
    """

    out: str | None = None
    cache: str | None = None
    online_teacher: str | None = None
    data: str | HFDataset | None = None  # training rows for online / ce modes
    task: str | None = None
    split: str | None = None  # default "train"
    limit: int | None = None
    dev_data: str | HFDataset | None = None  # GLUE folder, file or dataset of the dev split
    dev_split: str | None = None  # default "dev"
    dev_limit: int | None = None
    # columns of a table file (--data and --dev-data), as `hskcache build` takes them
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    max_length: int | None = None
    student: str = DEFAULT_STUDENT
    init: str = "select"
    init_from: str | None = None  # teacher folder to select from (default: the cache's teacher)
    proj_init: str = "select"
    # which dims `--init select` keeps: prefix | importance (importance.py); None: as the
    # cache's stored init was selected, or prefix from a teacher folder
    select: str | None = None
    # which teacher layers `--init select` copies: even | bottom | mapped; None: as stored, or
    # the shape's own (bottom for full4 / full6, else even: shapes.default_layer_choice)
    layer_choice: str | None = None
    mode: str = "two-stage"
    hsk_epochs: int | None = None  # default: the paper's per task
    pred_epochs: int = 5
    hsk_lr: float = 5e-5
    pred_lr: float = 2e-5
    batch_size: int = 32
    temperature: float = 1.0
    hard_weight: float = 0.0
    hsk_weight: float = 1.0
    kept_only: bool = False
    weight_decay: float = 0.01
    warmup: float = 0.0  # fraction of each stage's steps
    lr_decay: str = "none"
    max_grad_norm: float | None = None
    seed: int = 0
    device: str = "cpu"
    amp: str = "none"  # autocast dtype of the forward: none | bf16 | fp16 (CUDA, loss-scaled)
    buffer_chunks: int = 4
    group_by_length: bool = False  # batch rows of similar length together inside each buffer
    chunk_rows: int | None = None  # rows of in-memory data (online / ce) per chunk; default 256
    eval_batch_size: int = 128
    save_every: int | None = None
    max_steps: int | None = None  # stop (and save) after this many steps in total
    resume: bool = False
    verify: bool = True
    local_cache: str | None = None  # folder of a remote cache's local shard copy
    local_cache_size: str | None = None  # bytes or "10GB" / "10GiB"; default 10 GiB
    # online selection (offline runs read it from the cache manifest); defaults in DEFAULTS
    hsk: str | None = None
    length: str | None = None
    width_strategy: str | None = None
    score_layer: str | None = None
    l_top: int | None = None
    teacher_layers: list[int] = field(default_factory=list)
    batch_threshold: bool = False  # the paper's per-batch magnitude threshold (online only)

    def online_selection(self, student_layers: int) -> SelectionConfig:
        """The online selection for a student this deep (call on a `resolved` config)."""
        return SelectionConfig(
            self.hsk,
            self.length,
            self.width_strategy,
            self.score_layer,
            student_layers,
            self.l_top,
            list(self.teacher_layers),
            self.seed,
        )

    def resolved(self) -> FitConfig:
        """A copy with every option that was not given set to its default (after `validate`)."""
        return replace(self, **{k: v for k, v in DEFAULTS.items() if getattr(self, k) is None})

    def record(self) -> dict:
        """Every setting as a run's `config.json` records it (data in memory named by its type,
        not copied); what `--resume` and a sweep compare a saved run against."""
        return asdict(replace(self, data=data_label(self.data), dev_data=data_label(self.dev_data)))

    @property
    def columns(self) -> Columns:
        """The table columns of --data and --dev-data."""
        return Columns(self.text_column, self.text_pair_column, self.label_column)

    def validate(self) -> None:
        """Refuse bad or inapplicable settings, every problem in one message.

        Raises:
            ConfigError: naming each option to change.
        """
        p = _type_problems(self)
        if p:
            raise ConfigError("; ".join(p))
        if self.out is None:
            p.append("give --out RUN_FOLDER (or `out` in the --config file)")
        sources = [self.cache is not None, self.online_teacher is not None]
        if self.mode == "ce":
            if self.data is None and self.cache is None:
                p.append("mode 'ce' needs --data (or a --cache for its rows and labels)")
        elif sum(sources) != 1:
            p.append("give exactly one of --cache (offline) or --online-teacher (online)")
        if self.online_teacher is not None and self.data is None:
            p.append("--online-teacher needs --data (the training rows)")
        if self.batch_threshold and self.online_teacher is None:
            p.append("--batch-threshold needs --online-teacher (a cache has a fixed width)")
        given = [k for k in ONLINE_ONLY if getattr(self, k) not in (None, [])]
        if self.online_teacher is None and given:
            why = "the cache's selection is fixed" if self.cache else "there is no teacher"
            p.append(f"{', '.join(map(flag, given))}: online selection only ({why})")
        given = [k for k in DATA_ONLY if getattr(self, k) is not None]
        if self.cache is not None and given:
            p.append(f"{', '.join(map(flag, given))}: not with --cache (it holds the rows)")
        given = [k for k in ("dev_split", "dev_limit") if getattr(self, k) is not None]
        if self.dev_data is None and given:
            p.append(f"{', '.join(map(flag, given))} needs --dev-data")
        given = [k for k in COLUMNS if getattr(self, k) is not None]
        if self.data is None and self.dev_data is None and given:
            p.append(f"{', '.join(map(flag, given))}: name columns of --data or --dev-data")
        if self.mode not in MODES:
            p.append(f"mode must be one of {MODES}")
        elif self.hsk_epochs is not None and self.mode not in ("two-stage", "hsk"):
            p.append(f"--hsk-epochs: mode '{self.mode}' has no HSK stage")
        if self.init == "pretrained" and self.init_from is None:
            p.append("--init pretrained needs --init-from STUDENT_CHECKPOINT")
        if self.init not in INITS:
            p.append(f"init must be one of {INITS}")
        if self.init != "pretrained":
            p += student_problems(self.student)
        if self.proj_init not in PROJ_INITS:
            p.append(f"proj_init must be one of {list(PROJ_INITS)}")
        elif self.proj_init == "fitted" and self.kept_only:
            p.append(
                "--proj-init fitted solves for the loss over every dim; --kept-only compares the "
                "kept dims only: use one of them"
            )
        if self.select not in (None, *SELECTS):
            p.append(f"select must be one of {list(SELECTS)}")
        elif self.select is not None and self.init != "select":
            p.append(f"--select {self.select}: only with --init select")
        if self.layer_choice not in (None, *LAYER_CHOICES):
            p.append(f"layer_choice must be one of {list(LAYER_CHOICES)}")
        elif self.layer_choice is not None and self.init != "select":
            p.append(f"--layer-choice {self.layer_choice}: only with --init select")
        if self.score_layer is not None and self.score_layer not in SCORE_LAYERS:
            p.append(f"score_layer must be one of {SCORE_LAYERS}")
        for name in ("batch_size", "pred_epochs", "buffer_chunks", "eval_batch_size"):
            if getattr(self, name) < 1:
                p.append(f"{flag(name)} must be >= 1")
        for name in ("hsk_epochs", "limit", "dev_limit", "chunk_rows", "max_steps", "save_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                p.append(f"{flag(name)} must be >= 1 (got {getattr(self, name)})")
        if self.temperature <= 0:
            p.append("temperature must be > 0")
        if not 0 <= self.warmup < 1:
            p.append(f"--warmup is a fraction of the steps, in [0, 1) (got {self.warmup})")
        if self.lr_decay not in LR_DECAYS:
            p.append(f"--lr-decay must be one of {LR_DECAYS} (got {self.lr_decay!r})")
        if amp := amp_problem(self.amp, self.device):
            p.append(amp)
        try:
            check_device(self.device)
        except ConfigError as e:
            p.append(str(e))
        p += _local_cache_problems(self)
        if self.online_teacher is not None:
            r = self.resolved()
            try:
                r.online_selection(SELECTION_DEFAULTS.student_layers).parse()
            except ConfigError as e:
                p.append(str(e))
        if p:
            raise ConfigError("; ".join(p))


def student_problems(student: str) -> list[str]:
    """A `--student` that is no preset or shape, or a JSON shape asking for custom code."""
    try:
        student_shape(student)
    except HskError as e:
        return [str(e)]
    return []


def _local_cache_problems(cfg: FitConfig) -> list[str]:
    """The local shard copy applies to a remote --cache only (a local one is read in place)."""
    given = [k for k in ("local_cache", "local_cache_size") if getattr(cfg, k) is not None]
    if given and (cfg.cache is None or local_path(cfg.cache) is not None):
        return [
            f"{', '.join(map(flag, given))}: only with a remote --cache (s3://...); "
            "a local cache is read in place"
        ]
    try:
        if cfg.local_cache_size is not None:
            parse_size(cfg.local_cache_size)
    except ConfigError as e:
        return [f"--local-cache-size: {e}"]
    return []


def _type_problems(cfg) -> list[str]:
    """Values of the wrong type (a TOML file can hold any), named, before they are compared."""
    hints = get_type_hints(type(cfg))
    p = []
    for f in fields(cfg):
        v, hint = getattr(cfg, f.name), hints[f.name]
        if not matches(v, hint):
            ok = [t for t in get_args(hint) or (hint,) if t is not type(None)]
            p.append(f"{f.name} must be {'/'.join(type_name(t) for t in ok)}, not {v!r}")
    return p


# A teacher's fine-tune (CE from the pretrained encoder), wherever one runs: `hsktrain
# finetune`, a study's teachers, the end-to-end bench, the demo (which takes 2 epochs).
FINETUNE_EPOCHS = 3
FINETUNE_LR = 5e-5


def finetune_config(
    data: str | HFDataset,
    out: str | None,
    model: str,
    epochs: int | None,
    lr: float | None,
    limit: int | None,
    dev_limit: int | None,
    **rest,
) -> FitConfig:
    """`hsktrain finetune`'s options as the `ce` fit they run, refused in finetune's own terms;
    epochs and lr None take FINETUNE_EPOCHS and FINETUNE_LR.

    Raises:
        ConfigError: naming finetune's options (--epochs, --lr, --model), never fit's fields.
    """
    epochs = FINETUNE_EPOCHS if epochs is None else epochs
    lr = FINETUNE_LR if lr is None else lr
    p = []
    if out is None:
        p.append("give --out RUN_FOLDER")
    if epochs < 1:
        p.append(f"--epochs must be >= 1 (got {epochs})")
    if lr <= 0:
        p.append(f"--lr must be > 0 (got {lr})")
    for name, v in (("--limit", limit), ("--dev-limit", dev_limit)):
        if v is not None and v < 1:
            p.append(f"{name} must be >= 1 (got {v})")
    folder = Path(model)
    if folder.is_dir() and not (folder / "config.json").is_file():
        p.append(f"--model {model}: not a model folder (no config.json)")
    if p:
        raise ConfigError("; ".join(p))
    return FitConfig(
        out=out,
        data=data,
        mode="ce",
        init="pretrained",
        init_from=model,
        pred_epochs=epochs,
        pred_lr=lr,
        limit=limit,
        dev_limit=dev_limit,
        **rest,
    )
