"""The benches' clocks: a training step (`fit`'s own `train_step`, so a bench times exactly the
update the training loop makes), several kinds of step in interleaved rounds with each one's
median and spread, a bare teacher forward (the ceiling a build is measured
against), and the machine they ran on (every results file names it).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from hskcache.precision import autocast
from hskcache.teacher import Teacher, accepts
from hskcache.tokenize import Encoded
from hsktrain.config import FitConfig
from hsktrain.loader import ChunkShuffleLoader
from hsktrain.prepare import Run
from hsktrain.step import Distiller, make_optimizer, make_scaler, train_step

LR, WEIGHT_DECAY = 5e-5, 0.01  # any fixed values: the step's cost does not depend on them


def step_clock(
    run: Run, stage: str, cfg: FitConfig, batches: Iterable
) -> Callable[[], tuple[float, float] | None]:
    """A function that runs and times one `train_step` of `stage` on the next item of
    `batches` (rows from the run's loader); None once they run out.

    Each call returns (total, batch-ready) seconds: the clock starts before the loader is asked
    for the rows, so `ready` is the reader's stall (rows in hand, batch on the device).
    """
    net = Distiller(run.model, run.proj, run.teacher_width, run.regression)
    opt = make_optimizer(net, LR, WEIGHT_DECAY)
    scaler = make_scaler(cfg.device, cfg.amp)
    it = iter(batches)

    def one_step() -> tuple[float, float] | None:
        run.model.train()
        t0 = time.perf_counter()
        rows = next(it, None)
        if rows is None:
            return None
        b = run.make_batch(rows)
        t1 = time.perf_counter()
        train_step(net, opt, scaler, b, stage, LR, cfg)
        sync(cfg.device)  # the backward and the update run on after train_step returns
        return time.perf_counter() - t0, t1 - t0

    return one_step


def sync(device: str) -> None:
    """Wait for `device`'s queued kernels (CUDA runs them after the call that launched them
    returns), so that a clock read next counts them; nothing on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(
    run: Run, stage: str, cfg: FitConfig, batches: Iterable
) -> tuple[list[float], list[float]]:
    """`step_clock` over every item of `batches`.

    Returns:
        (total, batch-ready) seconds of each step.
    """
    step = step_clock(run, stage, cfg, batches)
    totals, ready = [], []
    while (t := step()) is not None:
        totals.append(t[0])
        ready.append(t[1])
    return totals, ready


def interleaved(
    clocks: dict[str, Callable[[], tuple[float, float] | None]], warmup: int, rounds: int
) -> dict[str, list[tuple[float, float]]]:
    """Time the sides in rounds: each round one step of every side, in the dict's order (bare,
    offline, online, int8, then again), `warmup` untimed rounds first.

    Each side timed in its own block put any drift of a shared machine's load between blocks on
    one side (a 2-core Xeon at load 0.9-1.9 measured the offline step at 0.83x the bare one,
    although it does the bare step's work and more); in rounds, drift lands on every side alike,
    and round r's sides can be compared with each other.

    Returns:
        {side: [(total, batch-ready) seconds of each timed round]}.

    Raises:
        ValueError: a side ran out of batches before the last round.
    """
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in clocks}
    for r in range(warmup + rounds):
        for name, clock in clocks.items():
            t = clock()
            if t is None:
                raise ValueError(f"side '{name}' ran out of batches in round {r}")
            if r >= warmup:
                out[name].append(t)
    return out


def median_spread(xs: Sequence[float]) -> tuple[float, float]:
    """The median of `xs` and the half-width of its ~95% interval, 1.57 IQR / sqrt(n) (the
    notch of a box plot, McGill, Tukey and Larsen 1978): a bound inside median +- spread is one
    these measurements cannot place on either side."""
    q1, med, q3 = np.percentile(xs, [25, 50, 75])
    return float(med), float(1.57 * (q3 - q1) / np.sqrt(len(xs)))


def every_epoch(loader: ChunkShuffleLoader) -> Iterator:
    """The loader's batches, epoch 0, 1, ... without end (a bench takes as many as it times)."""
    epoch = 0
    while True:
        yield from loader.iterate(epoch)
        epoch += 1


def data_order_batches(rows: int, batch: int) -> list[np.ndarray]:
    """Row indices of batches of consecutive rows: how a plain transformers loop batches."""
    return [np.arange(lo, min(rows, lo + batch)) for lo in range(0, rows, batch)]


def forward_timer(
    teacher: Teacher, enc: Encoded, batches: list[np.ndarray], device: str
) -> Callable[[], float]:
    """A function that times one pass of the teacher alone (sdpa, no hidden states, nothing
    selected or stored) over `batches` (row indices into `enc`), each trimmed to its longest
    row (dynamic padding), after the first batch: a warm-up that the build's timing skips too.
    """
    ids = torch.from_numpy(enc.input_ids).long()
    tt = torch.from_numpy(enc.token_type_ids).long()
    lengths = torch.from_numpy(enc.lengths).long()
    segments = accepts(teacher.model, "token_type_ids")  # MPNet has no segment ids

    def one_pass() -> float:
        t0 = None
        with torch.inference_mode(), autocast(device, teacher.amp):
            for idx in batches:
                rows = torch.from_numpy(idx)
                T = int(enc.lengths[idx].max())
                kw = {"token_type_ids": tt[rows, :T].to(device)} if segments else {}
                mask = torch.arange(T)[None, :] < lengths[rows, None]  # the build's mask
                teacher.model(
                    input_ids=ids[rows, :T].to(device), attention_mask=mask.long().to(device), **kw
                )
                if t0 is None:
                    sync(device)
                    t0 = time.perf_counter()
        sync(device)
        return time.perf_counter() - t0

    return one_pass


def machine() -> str:
    """CPU model, cores, torch version and threads, OS: the line every results file opens with."""
    cpu = platform.processor() or platform.machine()
    try:
        names = [
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    threads = torch.get_num_threads()
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} threads), "
        f"{platform.system()} {platform.release()}"
    )
