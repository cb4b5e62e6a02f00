"""`hsktrain fit` (and `finetune`): the training loop.

Features: the paper's two stages (HSK MSE, then soft CE to the teacher's logits) or one joint
stage; offline targets from a cache (the teacher is never loaded; weight selection reads its
safetensors once, then they are freed), online targets from a live teacher through the very
selection code the cache builder uses, or plain labels (`ce`). AdamW (decay 0.01, none on bias
and LayerNorm), optional warmup then constant lr, best dev checkpoint by the task's metric,
`metrics.jsonl`, exact `--resume` (weights, optimizer, RNG, loader position).
Trade-off: stores are read in the main process (memory-mapped, ~2 MiB chunks), not in workers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hskcache.errors import CacheMismatchError, ConfigError, TeacherError
from hskcache.progress import progress_bar
from hskcache.selection import parse_hsk
from hskcache.teacher import tokenizer_sha256
from hsktrain import batch as batches
from hsktrain.checkpoint import load_state, save_model, save_state
from hsktrain.config import PAPER_HSK_EPOCHS, FitConfig
from hsktrain.evaluate import predict_metrics
from hsktrain.loader import ChunkShuffleLoader
from hsktrain.losses import hsk_layer_loss, prediction_loss
from hsktrain.metrics import main_metric
from hsktrain.rows import encode_split
from hsktrain.students import build_student, make_projection


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


def stages_for(cfg: FitConfig, task: str) -> list[Stage]:
    hsk_epochs = cfg.hsk_epochs or PAPER_HSK_EPOCHS.get(task, 10)
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


def prepare(cfg: FitConfig) -> Run:
    """Open the rows, check they fit the student, build student, projection and targets."""

    from hskcache.reader import open_cache
    from hskcache.teacher import default_teacher_path
    from hskcache.verify import require_sound

    # 1. where rows come from: a cache (offline, or its labels for `ce`) or raw data
    manifest = None
    if cfg.cache is not None:
        cache = require_sound(cfg.cache) if cfg.verify else open_cache(cfg.cache)
        manifest = cache.manifest
        init_from = cfg.init_from or manifest["teacher"]["name"]
    else:
        init_from = cfg.init_from or cfg.online_teacher or str(default_teacher_path())
    tokenizer = _tokenizer(init_from)
    if manifest is not None:
        source, max_length = cache, manifest["max_length"]
        task, regression = manifest["data"]["task"], manifest["data"]["regression"]
        label_names = manifest["data"]["label_names"]
        _check_cache(cfg, manifest, tokenizer, init_from)
    else:
        source, ex, max_length = encode_split(
            cfg.data, cfg.task, cfg.split, cfg.limit, tokenizer, cfg.max_length, cfg.chunk_rows
        )
        task, regression, label_names = ex.task.name, ex.label_names is None, ex.label_names
    num_labels = 1 if regression else len(label_names)

    # 2. the student, and the layers it distils into
    model, init_info = build_student(cfg.init, init_from, cfg.student, num_labels, cfg.seed)
    model.to(cfg.device)
    n_student = model.config.num_hidden_layers
    if (
        manifest is not None
        and cfg.mode in ("two-stage", "joint", "hsk")
        and manifest["selection"]["student_layers"] != n_student
    ):
        raise CacheMismatchError(
            "selection.student_layers",
            n_student,
            manifest["selection"]["student_layers"],
            "rebuild the cache with --student-layers matching the student",
        )

    # 3. targets: read from the cache, computed live by the teacher, or none (labels only)
    teacher_width = manifest["teacher"]["hidden_size"] if manifest else model.config.hidden_size
    if manifest is not None:
        make = lambda rows: batches.from_cache(rows, manifest, cfg.device, regression)  # noqa: E731
    elif cfg.online_teacher is not None:
        make, teacher_width = _online(cfg, num_labels, max_length, n_student, regression)
    else:
        make = lambda rows: batches.inputs(rows, cfg.device, regression)  # noqa: E731
    with torch.random.fork_rng():  # the same projection however the targets are made
        torch.manual_seed(cfg.seed + 1)
        proj = make_projection(model.config.hidden_size, teacher_width, cfg.proj_init)
    dev = None
    if cfg.dev_data is not None:
        dev, _, _ = encode_split(
            cfg.dev_data, task, cfg.dev_split, cfg.dev_limit, tokenizer, max_length, cfg.chunk_rows
        )
    loader = ChunkShuffleLoader(source, cfg.batch_size, cfg.seed, cfg.buffer_chunks)
    record = {
        "config": dataclasses.asdict(cfg),
        "student_init": init_info,
        "task": task,
        "max_length": max_length,
        "cache_identity": manifest["identity"] if manifest else None,
    }
    return Run(
        model,
        proj.to(cfg.device),
        tokenizer,
        loader,
        make,
        stages_for(cfg, task),
        task,
        regression,
        dev,
        teacher_width,
        record,
    )


def _tokenizer(source: str):
    """The student's tokenizer (its init source's), or one clear error."""
    from transformers import AutoTokenizer

    folder = Path(source)
    if folder.exists() and not (folder / "config.json").is_file():
        raise TeacherError(
            f"{folder}: not a model folder (no config.json); pass a teacher or "
            "checkpoint folder to --init-from"
        )
    try:
        return AutoTokenizer.from_pretrained(source, use_fast=True)
    except (OSError, ValueError) as e:
        raise TeacherError(f"{source}: cannot load its tokenizer ({str(e).splitlines()[0]})") from e


def _check_cache(cfg: FitConfig, manifest: dict, tokenizer, init_from: str) -> None:
    """Refuse a cache built for another tokenizer or max length than this run's."""
    if cfg.max_length is not None and cfg.max_length != manifest["max_length"]:
        raise CacheMismatchError(
            "max_length",
            cfg.max_length,
            manifest["max_length"],
            "rebuild the cache with this --max-length",
        )
    found = tokenizer_sha256(tokenizer)
    if found != manifest["tokenizer"]["sha256"]:
        raise CacheMismatchError(
            "tokenizer.sha256",
            found[:12],
            manifest["tokenizer"]["sha256"][:12],
            f"the student's tokenizer ({init_from}) is not the one the cache was built with",
        )


def _online(cfg: FitConfig, num_labels: int, max_length: int, n_student: int, regression: bool):
    """Load the live teacher and return (rows -> Batch, teacher width) for online KD."""
    from hskcache.targets import plan_selection
    from hskcache.teacher import ClsScoreProbe, check_max_length, load_teacher

    teacher = load_teacher(cfg.online_teacher, num_labels, cfg.device, "float32", cfg.seed)
    check_max_length(teacher, max_length)
    sel = SimpleNamespace(**dataclasses.asdict(cfg), student_layers=n_student)
    threshold = None
    if cfg.batch_threshold:  # select full width; the threshold prunes per batch
        h = parse_hsk(cfg.hsk, cfg.length, cfg.width_strategy, cfg.seed)
        threshold = h.width
        sel.hsk = "full" if h.layers is None else f"{h.layers}l_{h.tokens}t_1h"
    plan = plan_selection(sel, teacher.config, max_length)
    scorers = {la["score_attention"] for la in plan.layers} - {None}
    probe = ClsScoreProbe(teacher.model, scorers) if scorers else None

    def make(rows):
        return batches.from_teacher(rows, teacher, probe, plan, cfg.device, regression, threshold)

    return make, teacher.config.hidden_size


def step_loss(stage: str, run: Run, b: batches.Batch, cfg: FitConfig) -> torch.Tensor:
    """The loss of one batch in one stage."""
    need_hidden = stage in ("hsk", "joint")
    out = run.model(**b.model_inputs(run.model), output_hidden_states=need_hidden)
    loss = out.logits.new_zeros(())
    if need_hidden:
        for la in b.layers:
            loss = loss + cfg.hsk_weight * hsk_layer_loss(
                out.hidden_states[la.student],
                run.proj,
                la.positions,
                la.values,
                la.dims,
                run.teacher_width,
                cfg.kept_only,
            )
    if stage in ("pred", "joint"):
        loss = loss + prediction_loss(
            out.logits, b.logits, b.labels, cfg.temperature, cfg.hard_weight, run.regression
        )
    if stage == "ce":
        loss = (
            F.mse_loss(out.logits.squeeze(-1), b.labels)
            if run.regression
            else F.cross_entropy(out.logits, b.labels)
        )
    return loss


def make_optimizer(run: Run, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; no decay on biases and LayerNorm weights."""
    named = list(run.model.named_parameters()) + [
        (f"proj.{n}", p) for n, p in run.proj.named_parameters()
    ]
    exempt = {n for n, _ in named if n.endswith("bias") or "norm" in n.lower()}
    return torch.optim.AdamW(
        [
            {"params": [p for n, p in named if n not in exempt], "weight_decay": weight_decay},
            {"params": [p for n, p in named if n in exempt], "weight_decay": 0.0},
        ],
        lr=lr,
    )


def fit(cfg: FitConfig, show_progress: bool = True) -> dict:
    """Train a student as `cfg` says; return the best dev metrics (empty without dev data)."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    run = prepare(cfg)
    torch.manual_seed(cfg.seed)  # dropout draws start here, whatever prepare consumed
    metric = main_metric(run.task) if not run.regression else "pearson"
    pos = {"stage": 0, "epoch": 0, "batch": 0, "step": 0, "best": None, "best_metrics": {}}
    last = out / "last"
    resuming = cfg.resume
    if cfg.resume:
        if not (last / "state.json").exists():
            raise ConfigError(f"{last}: nothing to resume; run without --resume")
        pos = json.loads((last / "state.json").read_text())["loop"]
        _trim_log(out / "metrics.jsonl", pos["step"])
    elif (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()  # a fresh run owns its log
    log = (out / "metrics.jsonl").open("a")
    (out / "config.json").write_text(json.dumps(run.record, indent=2, default=str))
    try:
        for si, stage in enumerate(run.stages):
            if si < pos["stage"]:
                continue
            opt = make_optimizer(run, stage.lr, cfg.weight_decay)
            if resuming:  # once: later stages start with fresh optimizers, as uninterrupted
                load_state(last, run.model, run.proj, opt)
                resuming = False
            per_epoch = run.loader.batches_per_epoch()
            total = stage.epochs * per_epoch
            warm = math.ceil(cfg.warmup * total)
            first = pos["epoch"] * per_epoch + pos["batch"]
            with progress_bar(
                f"{stage.name} stage", total, first, show_progress, unit="steps"
            ) as advance:
                for epoch in range(pos["epoch"], stage.epochs):
                    t0, losses = time.perf_counter(), []
                    run.model.train()
                    for i, rows in enumerate(
                        run.loader.iterate(si * 1000 + epoch, pos["batch"]), pos["batch"]
                    ):
                        done = epoch * per_epoch + i
                        for g in opt.param_groups:  # linear warmup, then constant (paper)
                            g["lr"] = stage.lr * min(1.0, (done + 1) / warm) if warm else stage.lr
                        loss = step_loss(stage.name, run, run.make_batch(rows), cfg)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        if cfg.max_grad_norm:
                            nn.utils.clip_grad_norm_(run.model.parameters(), cfg.max_grad_norm)
                        opt.step()
                        pos["step"] += 1
                        losses.append(loss.item())
                        advance(1, f"loss {np.mean(losses[-20:]):.4f}")
                        _log(
                            log,
                            {
                                "stage": stage.name,
                                "epoch": epoch,
                                "batch": i,
                                "step": pos["step"],
                                "loss": losses[-1],
                                "t": time.perf_counter(),
                            },
                        )
                        pos["batch"] = i + 1
                        if cfg.save_every and pos["step"] % cfg.save_every == 0:
                            _save_last(last, run, opt, pos)
                        if cfg.max_steps and pos["step"] >= cfg.max_steps:
                            _save_last(last, run, opt, pos)
                            return pos["best_metrics"]
                    pos["epoch"], pos["batch"] = epoch + 1, 0
                    record = {
                        "stage": stage.name,
                        "epoch": epoch,
                        "step": pos["step"],
                        "train_loss": float(np.mean(losses)) if losses else None,
                        "epoch_seconds": time.perf_counter() - t0,
                    }
                    if run.dev is not None:
                        scores = predict_metrics(
                            run.model,
                            run.dev,
                            run.task,
                            run.regression,
                            cfg.eval_batch_size,
                            cfg.device,
                        )
                        record["dev"] = scores
                        if stage.name != "hsk" and (
                            pos["best"] is None or scores[metric] > pos["best"]
                        ):
                            pos["best"], pos["best_metrics"] = scores[metric], scores
                            save_model(
                                out / "best",
                                run.model,
                                run.tokenizer,
                                run.proj,
                                {**run.record, "dev": scores, "stage": stage.name, "epoch": epoch},
                            )
                    _log(log, record)
                    _save_last(last, run, opt, pos)
            pos["stage"], pos["epoch"], pos["batch"] = si + 1, 0, 0
        if run.dev is None:
            save_model(out / "best", run.model, run.tokenizer, run.proj, run.record)
        _save_last(last, run, opt, pos)
    finally:
        log.close()
    return pos["best_metrics"]


def _save_last(folder: Path, run: Run, opt, pos: dict) -> None:
    save_state(folder, run.model, run.tokenizer, run.proj, opt, pos, run.record)


def _trim_log(path: Path, step: int) -> None:
    """Drop records past the resumed step: a killed run may have logged beyond its last save."""
    if path.exists():
        keep = [x for x in path.read_text().splitlines() if json.loads(x).get("step", 0) <= step]
        path.write_text("".join(f"{x}\n" for x in keep))


def _log(f, record: dict) -> None:
    f.write(json.dumps(record) + "\n")
    f.flush()
