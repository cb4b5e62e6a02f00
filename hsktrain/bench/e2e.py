"""`hsktrain bench e2e`: whole runs on real data, online fit vs `hskcache build` + offline fit.

A step benchmark (`hsktrain bench step`) times one synthetic KD step; this one times what a user
waits for. On a GLUE task (MRPC by default) it fine-tunes the teacher (or takes a fine-tuned
one; never timed), then, with the same seed, selection, epochs, rows, chunking and dynamic
padding on both sides:

- online: one complete `fit` with the teacher in memory computing the targets every step;
- offline: `hskcache build` (the teacher's one pass) and one complete `fit` from the cache.

It reports each side's wall-clock and CPU time (this process, all threads: on a shared machine
the load moves the wall-clock between the two sides, far less the CPU seconds), each
student's dev score (they agree up to the fp16
rounding of the stored targets: the two runs see the same batches in the same order), how
far their step losses drift apart, and the amortised speedup of N students trained from one
cache, (N x online) / (build + N x offline), for N = 1, 3, 10.
Trade-off: each side's clock includes its dev evaluations and checkpoints, which cost the same
on both sides; that is what a user waits for, and it lowers the speedup against a bare step.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hskcache.build import build_cache
from hskcache.config import BuildConfig
from hskcache.data import load_split
from hskcache.devices import amp_problem
from hskcache.errors import ConfigError
from hskcache.reader import open_cache
from hskcache.shapes import student_shape
from hskcache.tasks import get_task
from hskcache.teacher import default_teacher_path
from hsktrain.bench.timer import machine
from hsktrain.bench.verdict import verdicts
from hsktrain.config import DEFAULTS, FINETUNE_EPOCHS, FitConfig, finetune_config
from hsktrain.glue import find_task_data
from hsktrain.metrics import main_metric
from hsktrain.train import fit, read_metrics

NS = (1, 3, 10)  # students per cache in the amortised speedup
TARGETS = {  # name: (comparison, bound): the whole-run bench's own bounds
    "speedup_n1": (">=", 1.0),  # one student already pays for the build
    "dev_gap": ("<=", 0.01),  # same batches, targets differing by fp16 rounding only
}


@dataclass
class E2EConfig:
    """`hsktrain bench e2e`. None means the default the field's comment names."""

    data: str | None = None  # GLUE folder; None: $GLUE/<task>, ../shared/data/glue, the hub
    task: str | None = None  # None: inferred from --data's folder name, else mrpc
    teacher: str | None = None  # None: the MiniLM-L6 package
    finetune: bool = True  # fine-tune `teacher` on the task first (untimed)
    finetune_epochs: int = FINETUNE_EPOCHS
    hsk_epochs: int = 2
    pred_epochs: int = 2
    limit: int | None = None  # training rows (fine-tune, build and both fits)
    dev_limit: int | None = None
    student: str = "tinybert4"
    hsk: str = "1l_10t_0.1h"
    batch_size: int = 32
    seed: int = 0
    device: str = "cpu"
    amp: str = "none"  # autocast of every forward (fine-tune, online teacher, build, students)
    workdir: str | None = None

    def validate(self) -> None:
        """Refuse bad settings, every problem in one message.

        Raises:
            ConfigError: naming each option to change.
        """
        p = []
        for name in ("finetune_epochs", "hsk_epochs", "pred_epochs", "limit", "dev_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                p.append(f"--{name.replace('_', '-')} must be >= 1 (got {v})")
        try:
            student_shape(self.student)
        except ConfigError as e:
            p.append(str(e))
        if problem := amp_problem(self.amp, self.device):
            p.append(problem)
        if self.task is not None:
            try:
                get_task(self.task)
            except ConfigError as e:
                p.append(str(e))
        if p:
            raise ConfigError("; ".join(p))


def amortised_speedup(online_s: float, build_s: float, offline_s: float, n: int) -> float:
    """Speedup of training `n` students from one cache over `n` online runs:
    (n x online) / (build + n x offline)."""
    return n * online_s / (build_s + n * offline_s)


def run_e2e(cfg: E2EConfig, log: Callable[[str], None] = lambda _: None) -> dict:
    """Fine-tune (untimed), then time a whole online fit and build + offline fit; return the
    figures, the amortised speedups and the targets."""
    cfg.validate()
    load_start = os.getloadavg()
    if cfg.data is None:
        data, task = find_task_data(cfg.task or "mrpc")
    else:
        data, task = cfg.data, cfg.task
    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="hske2e-"))
    work.mkdir(parents=True, exist_ok=True)
    train = load_split(data, task, "train", limit=cfg.limit)
    task = train.task.name
    dev_rows = len(load_split(data, task, "dev", limit=cfg.dev_limit))
    teacher = _teacher(cfg, data, task, work, log)
    online, build, offline = _configs(cfg, data, task, teacher["teacher"], work)

    seconds, cpu, dev = {}, {}, {}
    log(f"online fit: {len(train)} rows, {cfg.hsk_epochs} + {cfg.pred_epochs} epochs")
    seconds["online"], cpu["online"], dev["online"] = _timed(fit, online, show_progress=False)
    log("hskcache build")
    seconds["build"], cpu["build"], _ = _timed(build_cache, build, show_progress=False)
    log("offline fit")
    seconds["offline"], cpu["offline"], dev["offline"] = _timed(fit, offline, show_progress=False)

    metric = main_metric(task)
    stats = open_cache(build.out).info.stats
    amortised = _amortised(seconds)
    result = {
        "mode": "e2e",
        "task": task,
        "data": data,
        "train_rows": len(train),
        "dev_rows": dev_rows,
        **teacher,
        "student": cfg.student,
        "hsk": cfg.hsk,
        "hsk_epochs": cfg.hsk_epochs,
        "pred_epochs": cfg.pred_epochs,
        "batch": cfg.batch_size,
        "seed": cfg.seed,
        "chunk_rows": online.chunk_rows,
        "device": cfg.device,
        "amp": cfg.amp,
        "machine": machine(),
        "load": {"start": load_start, "end": os.getloadavg()},
        "seconds": seconds,
        "cpu_seconds": cpu,
        "amortised_cpu": _amortised(cpu),
        "train_loop_seconds": {k: _loop_seconds(work / k) for k in ("online", "offline")},
        "metric": metric,
        "dev": dev,
        "dev_gap": abs(dev["online"][metric] - dev["offline"][metric]),
        "loss_drift": loss_drift(work / "online", work / "offline"),
        "cache_bytes_per_example": stats.bytes_per_example,
        "full_fp16_bytes_per_example": stats.full_fp16_bytes_per_example,
        "amortised": amortised,
        "limit_speedup": seconds["online"] / seconds["offline"],
    }
    result["targets"] = verdicts({"speedup_n1": amortised["1"], **result}, TARGETS)
    return result


def _amortised(t: dict[str, float]) -> dict[str, float]:
    """The amortised speedup for each N of `NS`, from the online, build and offline times."""
    return {str(n): amortised_speedup(t["online"], t["build"], t["offline"], n) for n in NS}


def _teacher(cfg: E2EConfig, data: str, task: str, work: Path, log: Callable) -> dict:
    """The teacher both sides use: `cfg.teacher` (default MiniLM-L6), fine-tuned on the task
    first (untimed by the bench, its seconds and dev scores reported) unless --no-finetune."""
    base = cfg.teacher or str(default_teacher_path())
    out = {"teacher": base, "teacher_base": base, "finetuned": cfg.finetune}
    out |= {"finetune_epochs": None, "finetune_s": None, "teacher_dev": None}
    if not cfg.finetune:
        return out
    log(f"fine-tune {base} on {task} ({cfg.finetune_epochs} epochs, not timed)")
    ft = finetune_config(
        data,
        str(work / "teacher"),
        base,
        cfg.finetune_epochs,
        None,
        cfg.limit,
        cfg.dev_limit,
        task=task,
        dev_data=data,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device=cfg.device,
        amp=cfg.amp,
    )
    t0 = time.perf_counter()
    out["teacher_dev"] = fit(ft, show_progress=False).metrics
    out["finetune_s"] = time.perf_counter() - t0
    return out | {"teacher": str(work / "teacher" / "best"), "finetune_epochs": cfg.finetune_epochs}


def _configs(
    cfg: E2EConfig, data: str, task: str, teacher: str, work: Path
) -> tuple[FitConfig, BuildConfig, FitConfig]:
    """The online fit, the build and the offline fit: the same rows, seed, epochs and chunking
    on both sides (the loader shuffles chunks, then rows inside a buffer of chunks, so equal
    chunk sizes give both fits the same batches)."""
    chunk_rows = DEFAULTS["chunk_rows"]
    common = dict(
        student=cfg.student,
        hsk_epochs=cfg.hsk_epochs,
        pred_epochs=cfg.pred_epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        device=cfg.device,
        amp=cfg.amp,
        dev_data=data,
        dev_limit=cfg.dev_limit,
    )
    online = FitConfig(
        out=str(work / "online"),
        online_teacher=teacher,
        data=data,
        task=task,
        limit=cfg.limit,
        init_from=teacher,
        hsk=cfg.hsk,
        chunk_rows=chunk_rows,
        **common,
    )
    build = BuildConfig(
        data=data,
        task=task,
        out=str(work / "cache"),
        teacher=teacher,
        hsk=cfg.hsk,
        limit=cfg.limit,
        student=[cfg.student],
        chunk_rows=chunk_rows,
        seed=cfg.seed,
        student_layers=student_shape(cfg.student)["num_hidden_layers"],
        batch_size=cfg.batch_size,
        device=cfg.device,
        amp=cfg.amp,
        overwrite=True,
    )
    offline = FitConfig(out=str(work / "offline"), cache=build.out, **common)
    return online, build, offline


def _timed(fn, *args, **kwargs) -> tuple[float, float, dict]:
    """Wall-clock and CPU seconds of a whole `fit` or build (loading included), and a fit's
    best dev scores."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return time.perf_counter() - w0, time.process_time() - c0, getattr(out, "metrics", None)


def _loop_seconds(run: Path) -> float:
    """Seconds inside the epochs' step loops (no loading, no dev evaluation)."""
    return sum(r["epoch_seconds"] for r in read_metrics(run) if "epoch_seconds" in r)


def loss_drift(a: Path, b: Path) -> dict:
    """How far two runs' step losses are apart: the median and largest relative difference,
    and the step count (None where the runs took different numbers of steps)."""
    la = [r["loss"] for r in read_metrics(a) if "loss" in r]
    lb = [r["loss"] for r in read_metrics(b) if "loss" in r]
    if len(la) != len(lb) or not la:
        return {"steps": None, "median": None, "max": None}
    rel = [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(la, lb, strict=True)]
    return {"steps": len(la), "median": statistics.median(rel), "max": max(rel)}
