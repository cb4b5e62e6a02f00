"""`hsktrain fit` (and `finetune`): the training loop.

Features: the paper's two stages (HSK MSE, then soft CE to the teacher's logits) or one joint
stage; offline targets from a cache (the teacher is never loaded; weight selection reads its
safetensors once, then they are freed), online targets from a live teacher through the very
selection code the cache builder uses, or plain labels (`ce`). AdamW (decay 0.01, none on bias
and LayerNorm), optional warmup then constant lr, best dev checkpoint by the task's metric,
`metrics.jsonl`, exact `--resume` (weights, optimizer, every rank's RNG, loader position),
DDP under torchrun (`--batch-size` is the global batch), `--amp` autocast.
Reads top to bottom: `fit` (`prepare` in prepare.py resolves the run) -> `train_stage` (one
stage's epochs; `train_step` in step.py is one update) -> `end_epoch` (dev score, best
checkpoint, last/), with `LoopState` the position.
Trade-off: stores are read in the main process (memory-mapped, ~2 MiB chunks), not in workers.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import time
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from hskcache.distributed import World, launched_world, start
from hskcache.errors import ConfigError, HskError
from hskcache.progress import progress_bar
from hsktrain import ddp
from hsktrain.checkpoint import (
    restore_checkpoint,
    resume_point,
    rng_state,
    same_cache,
    save_model,
    save_state,
)
from hsktrain.config import FitConfig
from hsktrain.evaluate import predict_metrics
from hsktrain.loader import STAGE_STRIDE, ChunkShuffleLoader, prefetched
from hsktrain.losses import HSKLoss
from hsktrain.metrics import learned_nothing, main_metric, one_answer_scores
from hsktrain.outputs import output_folder
from hsktrain.prepare import Run, Stage, prepare
from hsktrain.step import (
    Distiller,
    NonFiniteLossError,
    lr_schedule,
    make_optimizer,
    make_scaler,
    train_step,
)

METRICS_LOG = "metrics.jsonl"  # in a run's folder: a record a step and an epoch, appended


@dataclass
class LoopState:
    """Where the loop is; saved in `last/state.json`, so `--resume` continues from it exactly."""

    stage: int = 0  # index into the run's stages
    epoch: int = 0  # epoch within the stage
    batch: int = 0  # batches of this epoch done
    step: int = 0  # optimizer steps in all
    loss_sum: float = 0.0  # this epoch's losses so far: a resumed epoch still averages all of it
    loss_count: int = 0
    zero_sum: float = 0.0  # HSK stage: this epoch's all-zero prediction losses (the scale)
    best: float | None = None  # best dev score of the task's main metric
    best_metrics: dict = dataclasses.field(default_factory=dict)
    best_written: bool = False
    finished: bool = False
    seconds: float = 0.0  # the run's time up to this save, over every process that worked on it


@dataclass
class FitResult:
    metrics: dict  # the best dev scores (empty without dev data)
    best: Path | None  # OUT/best when this run wrote it
    last: Path
    note: str  # what a user should know about what was (not) written
    rank: int = 0
    # the run's time: preparing, training, scoring and saving, summed over a resumed run's
    # processes (each up to its last save: what a kill lost after it does not count)
    seconds: float = 0.0
    # the student's shape and size ("4 layers x 312, 14,352,818 parameters": TinyBERT4 from
    # MPNet): what a user weighs a full-width init (nearer the teacher, larger) against a
    # narrow one by
    student: str = ""
    # each dev metric's best from answering one class for every row (the floor `metrics` must
    # clear), and the warning when the best checkpoint cleared it by a point in no metric ("" if
    # it did)
    one_answer: dict = dataclasses.field(default_factory=dict)
    warning: str = ""


@dataclass
class Trainer:
    """What the loop's pieces share: the run, the stepped module, this process's place."""

    cfg: FitConfig
    run: Run
    net: Distiller  # student + projection
    step_net: nn.Module  # `net`, or DDP around it
    scaler: torch.amp.GradScaler
    world: World
    out: Path
    log: object | None  # metrics.jsonl, open on rank 0 only
    clock: float  # perf_counter() when the run would have started, had it run unbroken

    def seconds(self) -> float:
        """The run's time so far, a resumed run's earlier processes included."""
        return time.perf_counter() - self.clock

    def write(self, record: dict) -> None:
        if self.log is not None:
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()


def fit(cfg: FitConfig, show_progress: bool = True) -> FitResult:
    """Train a student as `cfg` says; under torchrun, this process's rank of a DDP run.

    Raises:
        ConfigError: bad settings, an `--out` that is a file or cannot be written, a resume
            that cannot continue.
        NonFiniteLossError: the loss became NaN or infinite.
        HskError: the disk filled up (last/ keeps the last complete checkpoint), or under
            torchrun another rank stopped.
    """
    cfg.validate()
    out = output_folder(cfg.out, "--out", "a folder for the run")
    if cfg.batch_size % launched_world():
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is the global batch and must split evenly over the "
            f"{launched_world()} processes; use a multiple of {launched_world()}"
        )
    w = start(cfg.device)
    try:
        cfg = replace(cfg.resolved(), device=ddp.rank_device(cfg.device, w))
        return _fit(cfg, out, w, show_progress)
    except (OSError, SafetensorError) as e:
        # safetensors (ours and transformers' save_pretrained) raises its own error type
        full = getattr(e, "errno", None) == errno.ENOSPC or "(os error 28)" in str(e)
        if not full:
            raise
        raise HskError(
            f"{out}: disk full; last/ holds the last complete checkpoint: free space and "
            "rerun with --resume"
        ) from e
    except RuntimeError as e:  # a collective whose peer process died, as one line
        if (stopped := ddp.peer_failure(e, w)) is None:
            raise
        raise stopped from e
    finally:
        w.close()


def _fit(cfg: FitConfig, out: Path, w: World, show_progress: bool) -> FitResult:
    """The run: check a resume, prepare, then each stage from the saved position on."""
    started, state, saved = time.perf_counter(), LoopState(), None
    if cfg.resume:
        loop, saved = resume_point(out, cfg, w)
        state = LoopState(**loop)
    torch.manual_seed(cfg.seed)
    run = prepare(cfg)
    run.record["world_size"] = w.world
    if saved is not None:
        same_cache(saved, run.record)
    if state.stage >= len(run.stages):  # a checkpoint from before runs recorded `finished`
        raise ConfigError(f"{out}: this run is finished; there is nothing to resume")
    # --batch-size is the global batch; each rank reads its own chunks (the loader's rank/world)
    run.loader = replace(
        run.loader, batch_size=cfg.batch_size // w.world, rank=w.rank, world=w.world
    )
    net = Distiller(run.model, run.proj, run.teacher_width, run.regression)
    scaler = make_scaler(cfg.device, cfg.amp)
    clock = started - state.seconds  # a resumed run counts its earlier processes' time
    t = Trainer(cfg, run, net, ddp.wrap(w, net, cfg.device), scaler, w, out, None, clock)
    torch.manual_seed(cfg.seed + w.rank)  # dropout draws start here, whatever prepare consumed
    t.log = open_log(out, state, w, run.record, cfg.resume)
    resuming = cfg.resume
    try:
        for si in range(state.stage, len(run.stages)):
            opt = make_optimizer(net, run.stages[si].lr, cfg.weight_decay)
            if resuming:  # once: later stages start with fresh optimizers, as uninterrupted
                meta = restore_checkpoint(out / "last", run.model, run.proj, opt, w.rank)
                if meta.get("scaler"):
                    t.scaler.load_state_dict(meta["scaler"])
                resuming = False
            if not train_stage(t, si, opt, state, show_progress and w.main):
                return _result(t, state, f"stopped at step {state.step} (--max-steps)")
            state.stage, state.epoch, state.batch = si + 1, 0, 0
        if run.dev is None and w.main:  # nothing to choose by: the final weights are the best
            # a general student is its encoder alone: `--init pretrained` adds a task's head
            model = run.model.base_model if run.general else run.model
            save_model(out / "best", model, run.tokenizer, run.proj, run.record)
            state.best_written = True
        state.finished = True
        save_last(t, opt, state)
    finally:
        if t.log is not None:
            t.log.close()
    return _result(t, state, "" if state.best_written else "--mode hsk scores no dev checkpoint")


def train_stage(t: Trainer, si: int, opt, state: LoopState, show_progress: bool) -> bool:
    """Run a stage's epochs from the loop's position on; False when --max-steps stopped it."""
    stage, cfg = t.run.stages[si], t.cfg
    steps = [steps_per_epoch(t.run.loader, si * STAGE_STRIDE + e) for e in range(stage.epochs)]
    warmup_steps = math.ceil(cfg.warmup * sum(steps))
    total = sum(steps) if cfg.lr_decay == "linear" else None
    first = sum(steps[: state.epoch]) + state.batch
    bar = progress_bar(f"{stage.name} stage", sum(steps), first, show_progress, unit="steps")
    # the HSK loss alone means little (it scales with the teacher's states): log its scale too
    hsk = stage.name == "hsk"
    hsk_loss = HSKLoss(t.net.proj, t.net.teacher_width, cfg.hsk_weight, cfg.kept_only)
    with bar as advance:
        for epoch in range(state.epoch, stage.epochs):
            t0 = time.perf_counter()
            t.run.model.train()
            rows = t.run.loader.iterate(si * STAGE_STRIDE + epoch, state.batch)
            # the next batches are read, decoded and pinned while this one trains
            batches = prefetched(
                map(t.run.make_batch, islice(rows, steps[epoch] - state.batch)), device=cfg.device
            )
            for i, b in enumerate(batches, state.batch):
                lr = lr_schedule(sum(steps[:epoch]) + i, warmup_steps, stage.lr, total)
                try:
                    loss = train_step(
                        t.step_net, opt, t.scaler, b, stage.name, lr, cfg, t.world.mean
                    )
                except NonFiniteLossError as e:
                    where = f"step {state.step + 1} ({stage.name} stage, epoch {epoch})"
                    raise NonFiniteLossError(f"{where}: {e}") from None
                state.step, state.batch = state.step + 1, i + 1
                state.loss_sum, state.loss_count = state.loss_sum + loss, state.loss_count + 1
                advance(1, f"loss {state.loss_sum / state.loss_count:.4f}")
                record = {"stage": stage.name, "epoch": epoch, "batch": i, "step": state.step}
                record |= {"loss": loss, "lr": lr, "t": time.perf_counter()}
                if hsk:
                    with torch.no_grad():
                        record["zero_loss"] = t.world.mean(hsk_loss.zero_prediction(b.layers))
                    state.zero_sum += record["zero_loss"]
                t.write(record)
                if cfg.save_every and state.step % cfg.save_every == 0:
                    save_last(t, opt, state)
                if cfg.max_steps and state.step >= cfg.max_steps:
                    save_last(t, opt, state)
                    return False
            end_epoch(t, stage, epoch, opt, state, time.perf_counter() - t0)
    return True


def end_epoch(t: Trainer, stage: Stage, epoch: int, opt, state: LoopState, seconds: float) -> None:
    """Log the epoch's mean loss, score dev (rank 0; the others wait), keep the best, save last/."""
    record = {
        "stage": stage.name,
        "epoch": epoch,
        "step": state.step,
        "train_loss": state.loss_sum / state.loss_count if state.loss_count else None,
        "epoch_seconds": seconds,
    }
    if stage.name == "hsk" and state.loss_count:  # the all-zero prediction's, averaged alike
        record["zero_loss"] = state.zero_sum / state.loss_count
    state.epoch, state.batch, state.loss_sum, state.loss_count = epoch + 1, 0, 0.0, 0
    state.zero_sum = 0.0
    run = t.run
    if run.dev is not None and t.world.main:
        scores = predict_metrics(
            run.model, run.dev, run.task, run.regression, t.cfg.eval_batch_size, t.cfg.device
        )
        record["dev"] = scores
        metric = main_metric(run.task, run.regression)
        if stage.name != "hsk" and (state.best is None or scores[metric] > state.best):
            state.best, state.best_metrics = scores[metric], scores
            extra = {**run.record, "dev": scores, "stage": stage.name, "epoch": epoch}
            save_model(t.out / "best", run.model, run.tokenizer, run.proj, extra)
            state.best_written = True
    t.world.barrier()
    t.write(record)
    save_last(t, opt, state)


def steps_per_epoch(loader: ChunkShuffleLoader, epoch: int) -> int:
    """Steps of one epoch: under DDP the fewest batches any rank has, so all step together."""
    n = int(min(replace(loader, rank=r).batches_per_epoch(epoch) for r in range(loader.world)))
    if n == 0:
        raise ConfigError(
            f"{loader.source.num_chunks} chunks cannot feed {loader.world} processes every epoch; "
            "use fewer processes or a cache with smaller chunks (hskcache build --chunk-rows)"
        )
    return n


def save_last(t: Trainer, opt, state: LoopState) -> None:
    """`last/`: weights, optimizer, every rank's RNG and the loop state, written by rank 0."""
    rngs = t.world.gather(rng_state(t.world.rank))
    state.seconds = t.seconds()
    if t.world.main:
        save_state(
            t.out / "last",
            t.run.model,
            t.run.tokenizer,
            t.run.proj,
            opt,
            dataclasses.asdict(state),
            t.run.record,
            {k: v for r in rngs for k, v in r.items()},
            t.scaler.state_dict(),
        )
    t.world.barrier()


def open_log(out: Path, state: LoopState, w: World, record: dict, resume: bool):
    """Create the run folder (only now: refused runs leave none) and open metrics.jsonl (rank 0)."""
    if not w.main:
        return None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise
        raise ConfigError(f"{out}: cannot create the run folder ({e.strerror})") from e
    log = out / METRICS_LOG
    if resume:
        _trim_log(log, state.step)
    elif log.exists():
        log.unlink()  # a fresh run owns its log
    (out / "config.json").write_text(json.dumps(record, indent=2, default=str))
    return log.open("a")


def _result(t: Trainer, state: LoopState, note: str) -> FitResult:
    best = t.out / "best" if state.best_written else None
    c, n = t.run.model.config, sum(p.numel() for p in t.run.model.parameters())
    size = f"{c.num_hidden_layers} layers x {c.hidden_size}, {n:,} parameters"
    run, floor = t.run, {}
    if run.dev is not None and state.best_metrics:  # --mode hsk scores nothing: nothing to judge
        floor = one_answer_scores(run.task, run.dev.arrays["labels"])
    return FitResult(
        state.best_metrics,
        best,
        t.out / "last",
        note,
        t.world.rank,
        t.seconds(),
        size,
        one_answer=floor,
        warning=learned_nothing(run.task, state.best_metrics, floor) or "",
    )


def read_metrics(out: Path) -> list[dict]:
    """The records a fit wrote to `out`'s metrics.jsonl, in order: one a step, one an epoch
    (with its dev scores); the one reader of that log for everything that times or judges a run."""
    return [json.loads(line) for line in (out / METRICS_LOG).read_text().splitlines()]


def _trim_log(path: Path, step: int) -> None:
    """Drop records past the resumed step: a killed run may have logged beyond its last save."""
    if path.exists():
        keep = [x for x in path.read_text().splitlines() if json.loads(x).get("step", 0) <= step]
        path.write_text("".join(f"{x}\n" for x in keep))
