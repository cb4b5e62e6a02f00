"""`hsktrain sweep --dry-run`: the grid, which runs are done, and an estimate of the rest."""

from __future__ import annotations

import functools
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from hskcache.build import build_cache
from hskcache.config import BuildConfig
from hskcache.data import load_split
from hskcache.shapes import student_shape
from hsktrain.checkpoint import read_state
from hsktrain.config import FitConfig
from hsktrain.study.caches import cache_plan, family_source, plain_cache_name
from hsktrain.study.context import Context
from hsktrain.study.grid import Grid
from hsktrain.study.runs import Rows, RunSpec, TaskRef, config_rows, epochs, rows_limit, task_limit
from hsktrain.study.sweep import plan_sweep
from hsktrain.study.tables import builds_table, results_table
from hsktrain.study.teachers import base_teacher
from hsktrain.train import fit, read_metrics


def dry_run(grid: Grid, measure: bool = True, say=print) -> dict:
    """Print the grid, which runs are done, and the time the rest should take; train nothing.

    The estimate, per task: seconds per training row and epoch are the median
    `train_seconds / epochs / rows` of the task's rows already in the table from the same
    device (a GPU's seconds say nothing of a CPU's); without any, a few CE steps of the student
    are timed on this machine (per step, after the first two) and an epoch is `steps * step +
    dev rows scored at a third of a step's cost per row`. A run's rows are its arm's: the
    study's extra rows (augmented variants, unlabelled rows) count, the CE-only arm reads the
    labelled ones. Cache builds and fine-tunes: rows per second of earlier builds in builds.csv
    on the same device, else a teacher pass over 96 rows (batch 16) timed here, times the rows
    each build labels; a fine-tune epoch costs three teacher passes (forward and backward) of
    its labelled rows. Derives count as free. A run a kill cut short counts only the epochs
    after its last saved one (the sweep continues it from there).

    Returns:
        {"runs", "done", "pending", "seconds", "how"}.
    """
    sweep = plan_sweep(grid, train=False, show_progress=False, say=say)
    ctx, rows = sweep.ctx, results_table(grid.study).rows()
    done = {(r.task.name, r.config, r.seed) for r in sweep.done}
    say(f"{len(sweep.runs)} runs: {len(sweep.done)} done, {len(sweep.pending)} to run")
    by_arm: dict[tuple, list] = {}
    for r in sweep.runs:
        by_arm.setdefault((r.task.name, r.config, r.arm.axis), []).append(r.seed)
    for (task, config, axis), seeds in by_arm.items():
        marks = " ".join(f"{s}{'*' if (task, config, s) in done else ''}" for s in seeds)
        say(f"  {task:6} {config:48} {axis:24} seeds {marks}")
    say("  (* = already in results.csv)")
    total, how = 0.0, []
    disk, unknown = 0.0, 0  # bytes of the caches still to write; how many have no estimate
    for task in sweep.tasks:
        pending = [r for r in sweep.pending if r.task == task]
        if not pending:
            continue
        count, n_dev = _row_counts(grid, task)
        n_rows = functools.partial(_arm_rows, grid, task, count)
        teacher = ctx.teachers[task.name]
        epoch_s, epoch_why = _epoch_seconds(ctx, task, rows, count, n_dev, measure)
        saved = [_epochs_saved(ctx, r) for r in pending]
        if epoch_s is not None:
            total += sum(
                (sum(epochs(grid, r)) - k) * epoch_s(n_rows(r.arm.rows))
                for r, k in zip(pending, saved, strict=True)
            )
            plain = n_rows(Rows())
            how.append(f"{task.name}: {epoch_s(plain):.1f} s/epoch of {plain} rows ({epoch_why})")
        if any(saved):
            how.append(
                f"{task.name}: {sum(k > 0 for k in saved)} run(s) a kill cut short continue from "
                f"their last saved epoch ({sum(saved)} epoch(s) trained already, not counted)"
            )
        builds = _builds_needed(ctx, task, pending)
        size, unsized = _bytes_needed(ctx, task, pending, builds, n_rows)
        disk, unknown = disk + size, unknown + unsized
        if builds or teacher.path is None:
            rate, why = _teacher_rate(ctx, task, measure)
            if rate is None:
                how.append(f"{task.name}: {len(builds)} build(s) not estimated ({why})")
            else:
                ft = 3 * grid.finetune_epochs if teacher.path is None else 0
                passes = sum(n_rows(b) for b, _ in builds) + ft * n_rows(Rows())
                total += passes / rate
                how.append(
                    f"{task.name}: {len(builds)} build(s) of {passes - ft * n_rows(Rows())} "
                    f"rows, {ft // 3} fine-tune epoch(s) at {rate:.1f} teacher rows/s ({why})"
                )
        if epoch_s is None:
            how.append(f"{task.name}: training not estimated ({epoch_why})")
    say(f"estimated time: {total / 3600:.1f} h ({total:.0f} s)")
    for line in how:
        say(f"  {line}")
    _say_disk(grid.work, disk, unknown, say)
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if any(" here" in line for line in how) and load > cores / 2:
        say(
            f"  timed at load {load:.1f} on {cores} cores: other work here (a study running?) "
            "inflates the estimate"
        )
    return {
        "runs": len(sweep.runs),
        "done": len(sweep.done),
        "pending": len(sweep.pending),
        "seconds": total,
        "how": how,
    }


def _epochs_saved(ctx: Context, run: RunSpec) -> int:
    """Whole epochs in the last checkpoint of a run a kill cut short (0 when none): the sweep
    continues it from there when its settings are unchanged."""
    if ctx.teachers[run.task.name].key is None:  # its teacher is not fine-tuned yet
        return 0
    try:
        loop = read_state(ctx.run_dir(run) / "last")["loop"]
    except (OSError, ValueError, KeyError):
        return 0
    hsk_epochs, _ = epochs(ctx.grid, run)  # the first stage's, when the arm has two
    return 0 if loop.get("finished") else hsk_epochs * (loop["stage"] >= 1) + loop["epoch"]


def _row_counts(grid: Grid, task: TaskRef) -> tuple[Callable[[int | None], int], int]:
    """(training rows read under a limit, dev rows)."""
    n_train = len(load_split(task.folder, task.name, "train", limit=task_limit(grid, task)))
    count = lambda limit: n_train if limit is None else min(limit, n_train)  # noqa: E731
    return count, len(load_split(task.folder, task.name, "dev", limit=grid.dev_limit))


def _arm_rows(grid: Grid, task: TaskRef, count: Callable[[int | None], int], rows: Rows) -> int:
    """Rows an epoch of an arm with these extra rows reads (the CE-only arm's are plain)."""
    return count(rows_limit(grid, task, rows)) * (1 + rows.augment)


def _epoch_seconds(
    ctx, task, rows, count, n_dev, measure
) -> tuple[Callable[[int], float] | None, str]:
    """Seconds of an epoch over N training rows, as a function of N, and how it was found."""
    grid = ctx.grid
    mine = [
        r
        for r in rows
        if r["task"] == task.name and r["student"] == grid.student and r["device"] == ctx.device
    ]
    per = [
        float(r["train_seconds"]) / (int(r["hsk_epochs"]) + int(r["pred_epochs"])) / trained
        for r in mine
        if r["train_seconds"] and (trained := _trained_rows(r, count))
    ]
    if per:
        per_row = statistics.median(per)
        why = f"median of {len(per)} finished runs on {ctx.device} in results.csv"
        return lambda n: per_row * n, why
    if not measure:
        return None, "no finished run of this task, and measuring was turned off"
    step = measure_step(grid, task)
    batch = grid.fit.get("batch_size", 32)
    why = f"{step * 1000:.0f} ms/step measured here, batch {batch}"
    return lambda n: step * (-(-n // batch) + -(-n_dev // batch) / 3), why


def _trained_rows(row: dict, count: Callable[[int | None], int]) -> int:
    """Rows one epoch of a finished run read: its limit's, times its augmentation."""
    limit = int(row["limit"]) if row["limit"] else None
    return count(limit) * (1 + config_rows(row["config"]).augment)


def measure_step(grid: Grid, task: TaskRef, steps: int = 6) -> float:
    """Seconds per CE step of the student on the task's first rows, timed on this machine
    (steps after the first two, which warm up)."""
    options = {k: v for k, v in grid.fit.items() if k not in ("hsk_lr", "pred_lr", "verify")}
    with tempfile.TemporaryDirectory(prefix="hsksweep-") as tmp:
        cfg = FitConfig(
            out=tmp,
            data=task.folder,
            task=task.name,
            mode="ce",
            student=grid.student,
            init_from=base_teacher(grid),
            limit=options.get("batch_size", 32) * steps,
            max_steps=steps,
            pred_epochs=1,
            **options,
        )
        fit(cfg, show_progress=False)
        ts = [r["t"] for r in read_metrics(Path(tmp)) if "loss" in r]
    return (ts[-1] - ts[1]) / max(1, len(ts) - 2)


def _builds_needed(
    ctx: Context, task: TaskRef, pending: list[RunSpec]
) -> list[tuple[Rows, str | None]]:
    """Each teacher pass the pending runs of a task still need (derived caches cost no pass):
    one per family source not built yet, as its rows and its cache's folder name (None while
    the teacher is not fine-tuned, which names the folders)."""
    sels = [cache_plan(r.arm) for r in ctx.runs if r.task == task and r.arm.kind == "hsk"]
    if ctx.teachers[task.name].key is None:
        return [(f[-1], None) for f in {s.family for s in sels}] or [(Rows(), None)]
    need: dict = {}
    for r in pending:
        mine = [s for s in sels if s.rows == r.arm.rows] or sels
        sel = cache_plan(r.arm) if r.arm.kind == "hsk" else (mine[0] if mine else None)
        if sel is None:
            need[r.arm.rows] = (r.arm.rows, None)
            continue
        source = family_source([s for s in sels if s.family == sel.family] or [sel])
        if not ctx._complete(path := ctx.cache_dir(task, source)):
            need[source] = (source.rows, path.name)
    return list(need.values())


def _bytes_needed(
    ctx: Context,
    task: TaskRef,
    pending: list[RunSpec],
    builds: list[tuple[Rows, str | None]],
    n_rows: Callable[[Rows], int],
) -> tuple[float, int]:
    """Bytes the caches the pending runs still need should take (built, or cut from one), and
    how many of them have nothing to go by. A cache's size is read off the builds of its
    selection (any extra rows) in builds.csv: with two row counts, a line through them (a
    stored student init weighs the same at any rows); with one, its bytes per row (an upper
    bound)."""
    names = {name: rows for rows, name in builds if name}
    for r in pending:
        if r.arm.kind != "hsk" or r.arm.online or ctx.teachers[task.name].key is None:
            continue
        if not ctx._complete(path := ctx.cache_dir(task, cache_plan(r.arm))):
            names[path.name] = r.arm.rows
    sizes: dict[str, dict[int, int]] = {}  # selection -> rows -> bytes (the newest build's)
    for b in builds_table(ctx.grid.study).rows():
        if b["task"] == task.name and b["how"].startswith("build") and b["bytes"] and b["rows"]:
            sizes.setdefault(plain_cache_name(b["cache"]), {})[int(b["rows"])] = int(b["bytes"])
    total, unknown = 0.0, sum(name is None for _, name in builds)
    for name, rows in names.items():
        seen = sizes.get(plain_cache_name(name))
        if not seen:
            unknown += 1
            continue
        (n0, b0), (n1, b1) = min(seen.items()), max(seen.items())
        per_row = (b1 - b0) / (n1 - n0) if n1 > n0 and b1 > b0 else b1 / n1
        total += b1 + per_row * (n_rows(rows) - n1)
    return total, unknown


def _say_disk(work: Path, size: float, unknown: int, say) -> None:
    """The disk the caches still to write should take against the free space where they go,
    and a warning when they do not fit (a build stops on a full disk, resumable, but hours in)."""
    if not size and not unknown:
        return
    where = next(p for p in (work, *work.parents) if p.exists())
    free = shutil.disk_usage(where).free
    say(f"disk: about {size / 1e9:.1f} GB of caches to write, {free / 1e9:.1f} GB free at {where}")
    if unknown:
        say(f"  {unknown} cache(s) not estimated: no cache of their selection built yet")
    if size > free:
        say(
            "  warning: the caches will not fit; free space there, or run fewer arms "
            "(--configs, --extra-rows) and remove a finished study's work/caches"
        )


def _teacher_rate(ctx: Context, task: TaskRef, measure: bool) -> tuple[float | None, str]:
    grid = ctx.grid
    rows = [
        r
        for r in builds_table(grid.study).rows()
        if r["task"] == task.name
        and r["how"].startswith("build")
        and not r["how"].endswith("(resumed)")  # seconds of its last process only
        and r["rows"]
        and r["device"] == ctx.device
    ]
    if rows:
        rate = sum(int(r["rows"]) for r in rows) / sum(float(r["seconds"]) for r in rows)
        return rate, f"{len(rows)} earlier build(s) on {ctx.device} in builds.csv"
    if not measure:
        return None, "no earlier build, and measuring was turned off"

    timings: dict = {}
    with tempfile.TemporaryDirectory(prefix="hsksweep-") as tmp:
        cfg = BuildConfig(
            data=task.folder,
            task=task.name,
            out=tmp + "/cache",
            hsk="1l_1t_0.1h",
            teacher=base_teacher(grid),
            student_layers=student_shape(grid.student)["num_hidden_layers"],
            student=[grid.student],
            max_length=task.max_length,
            limit=96,
            batch_size=16,
            device=grid.fit.get("device", "cpu"),
        )
        build_cache(cfg, False, timings)
    if not timings.get("rows") or not timings.get("seconds"):
        return None, "too few rows to time the teacher"
    return timings["rows"] / timings["seconds"], "a 96-row teacher pass timed here"
