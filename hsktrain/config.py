"""Typed configs of the `hsktrain` commands (same fields from flags or a TOML file)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hskcache.errors import ConfigError
from hskcache.selection import SCORE_LAYERS, parse_hsk
from hsktrain.students import INITS, student_shape

MODES = ("two-stage", "joint", "hsk", "pred", "ce")
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


@dataclass
class FitConfig:
    """`hsktrain fit`: a student from a cache (offline), a live teacher (online) or labels (ce)."""

    out: str
    cache: str | None = None
    online_teacher: str | None = None
    data: str | None = None  # training rows for online / ce modes
    task: str | None = None
    split: str = "train"
    limit: int | None = None
    dev_data: str | None = None  # GLUE folder or file holding the dev split
    dev_split: str = "dev"
    dev_limit: int | None = None
    max_length: int | None = None
    student: str = "tinybert4"
    init: str = "select"
    init_from: str | None = None  # teacher folder to select from (default: the cache's teacher)
    proj_init: str = "select"
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
    max_grad_norm: float | None = None
    seed: int = 0
    device: str = "cpu"
    buffer_chunks: int = 4
    chunk_rows: int = 256  # chunking of in-memory rows (online / ce), as a cache would have
    eval_batch_size: int = 128
    log_every: int = 10
    save_every: int | None = None
    max_steps: int | None = None  # stop (and save) after this many steps in total
    resume: bool = False
    verify: bool = True
    # online selection (offline runs read it from the cache manifest)
    hsk: str = "1l_10t_0.1h"
    length: str = "attention-no-sep"
    width_strategy: str = "magnitude"
    score_layer: str = "producing"
    l_top: int | None = None
    teacher_layers: list[int] = field(default_factory=list)
    batch_threshold: bool = False  # the paper's per-batch magnitude threshold (online only)

    def validate(self) -> None:
        p = []
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
        if self.mode not in MODES:
            p.append(f"mode must be one of {MODES}")
        if self.init == "pretrained" and self.init_from is None:
            p.append("--init pretrained needs --init-from STUDENT_CHECKPOINT")
        if self.init not in INITS:
            p.append(f"init must be one of {INITS}")
        if self.init != "pretrained":
            try:
                student_shape(self.student)
            except ConfigError as e:
                p.append(str(e))
        if self.proj_init not in ("select", "random"):
            p.append("proj_init must be select or random")
        if self.score_layer not in SCORE_LAYERS:
            p.append(f"score_layer must be one of {SCORE_LAYERS}")
        for name in ("batch_size", "pred_epochs", "buffer_chunks", "chunk_rows", "log_every"):
            if getattr(self, name) < 1:
                p.append(f"{name} must be >= 1")
        if self.temperature <= 0:
            p.append("temperature must be > 0")
        if self.online_teacher is not None:
            try:
                parse_hsk(self.hsk, self.length, self.width_strategy, self.seed)
            except ConfigError as e:
                p.append(str(e))
        if p:
            raise ConfigError("; ".join(p))


@dataclass
class FinetuneConfig:
    """`hsktrain finetune`: CE fine-tuning of a teacher, best dev checkpoint kept."""

    data: str
    out: str
    model: str | None = None  # default: the MiniLM-L6 package
    task: str | None = None
    dev_data: str | None = None
    limit: int | None = None
    dev_limit: int | None = None
    max_length: int | None = None
    epochs: int = 3
    lr: float = 5e-5
    batch_size: int = 32
    weight_decay: float = 0.01
    warmup: float = 0.1
    seed: int = 0
    device: str = "cpu"
    eval_batch_size: int = 128

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs and batch_size must be >= 1 and lr > 0")
