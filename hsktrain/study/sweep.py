"""`hsktrain sweep`: a study grid (HSK configs x seeds x tasks), run a piece at a time.

Features (the grid is in grid.py, its runs in runs.py, what each run's log says in runlog.py,
teacher lookups in teachers.py, cache plans in caches.py, how caches are made in context.py,
the tables in tables.py, the dry run in estimate.py):
one largest cache built per (teacher, task, length strategy, width family, l_top),
the rest cut out of it by `hskcache derive` (a direct build when a cut is not exact); results
appended to `STUDY/results.csv` one flushed row per run, so a rerun skips every (task, teacher,
config, seed) already there and continues the run a kill interrupted from its last saved epoch
(`fit --resume`, when none of its settings changed: a killed sweep loses at most one epoch of
one run per process); `--shard I/N`
sweeps of one study split its runs and share its tables, teachers and caches under file locks.
A study's extra rows (`augment`, `labelled`) are part of a cache's identity: they name its
folder and its family, so derive never cuts a plain cache out of an augmented one.
Trade-off: every cache of a study uses the same `chunk_rows`, so every arm of a task sees the
same batches for a seed (only the HSK differs), at the price of fixed-size chunks.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from hskcache.data import load_split
from hskcache.errors import ConfigError
from hskcache.reader import open_cache
from hsktrain.checkpoint import can_resume
from hsktrain.config import FitConfig, finetune_config
from hsktrain.metrics import METRICS, one_answer_scores
from hsktrain.study.caches import cache_plan
from hsktrain.study.context import Context, work_lock
from hsktrain.study.grid import Grid
from hsktrain.study.runlog import best_epoch, log_summary, read_log
from hsktrain.study.runs import (
    Rows,
    RunSpec,
    TaskRef,
    epochs,
    expand_grid,
    fit_options,
    resolve_tasks,
    rows_limit,
)
from hsktrain.study.tables import (
    FLOOR,
    KEY,
    builds_table,
    code_version,
    logs_table,
    now,
    other_teachers,
    planned,
    results_table,
    split_done,
    tuned_elsewhere,
)
from hsktrain.study.teachers import (
    TUNED,
    TeacherRef,
    base_teacher,
    finetuned_dir,
    teacher_depth,
    teacher_key,
    teacher_name,
)
from hsktrain.train import FitResult, fit

# --- teachers and the floor -------------------------------------------------------------------


def resolve_teacher(grid: Grid, task: TaskRef, base: str, ctx: Context | None) -> TeacherRef:
    """The teacher of a task's caches; with `finetune`, fine-tuned first (once: a finished
    fine-tune leaves `teacher.json` and is reused). `ctx` None: look only, never train."""
    depth = teacher_depth(base)
    if not grid.finetune:
        key = teacher_key(base, task.name, teacher_name(base, False))
        if ctx is not None:
            _note_reused(ctx, task, base, key)
        return TeacherRef(base, key, depth)
    folder = finetuned_dir(grid, task, base)
    if not (folder / TUNED).is_file():
        if ctx is None:
            return TeacherRef(None, None, depth)
        with work_lock(grid, folder.name):  # the first shard fine-tunes; the others reuse it
            if not (folder / TUNED).is_file():
                _note_other_device(grid, task, ctx)
                _finetune(grid, task, base, folder, ctx)
    best = str(folder / "best")
    return TeacherRef(best, teacher_key(best, task.name, teacher_name(base, True)), depth)


def _note_other_device(grid: Grid, task: TaskRef, ctx: Context) -> None:
    """Before a fine-tune (an hour for a BERT-base-sized teacher on a CPU), not an hour later:
    the rows it will likely not continue (`tables.tuned_elsewhere`)."""
    builds, rows = ctx.builds.rows(), results_table(grid.study).rows()
    for line in tuned_elsewhere(task.name, ctx.device, builds, rows):
        ctx.say(f"note: {line}")


def _finetune(grid: Grid, task: TaskRef, base: str, folder: Path, ctx: Context) -> None:
    ctx.say(f"fine-tune {teacher_name(base, False)} on {task.name} -> {folder}")
    cfg = finetune_config(
        task.folder,
        str(folder),
        base,
        grid.finetune_epochs,
        grid.finetune_lr,
        # with `labelled`, the N labelled rows only: gold labels of the rows the students see
        # unlabelled must not reach them through the teacher
        rows_limit(grid, task, Rows()),
        grid.dev_limit,
        seed=0,
        task=task.name,
        dev_data=task.folder,
        max_length=task.max_length,
        device=grid.fit.get("device", "cpu"),
    )
    result = fit_or_resume(cfg, ctx)
    shutil.rmtree(folder / "last", ignore_errors=True)  # best/ is the teacher
    key = teacher_key(str(folder / "best"), task.name, teacher_name(base, True))
    size = _folder_bytes(folder / "best")
    ctx.builds.append(
        _teacher_row(ctx, task, key, "finetune", base, result.seconds, size, result.metrics)
    )
    (folder / TUNED).write_text(json.dumps({"base": base, "dev": result.metrics}))


def _note_reused(ctx: Context, task: TaskRef, path: str, key: str) -> None:
    """A teacher another sweep fine-tuned (its `best/`, beside that sweep's `teacher.json`) is
    recorded once in this study's builds table with the dev scores it was chosen by (how
    `reuse`, no seconds: none spent here), so the report judges the teacher targets from the
    committed tables alone."""
    tuned = Path(path).parent / TUNED
    if Path(path).name != "best" or not tuned.is_file():
        return
    with work_lock(ctx.grid, f"reuse-{task.name}"):  # shards: one row, not one each
        if any(
            (r["task"], r["teacher"], r["how"]) == (task.name, key, "reuse")
            for r in ctx.builds.rows()
        ):
            return
        dev = json.loads(tuned.read_text())["dev"]
        ctx.builds.append(_teacher_row(ctx, task, key, "reuse", path, 0.0, None, dev))


def note_floor(ctx: Context, task: TaskRef) -> None:
    """Record once in the builds table what answering one class for every dev row scores
    (`one_answer_scores`; how `floor`): the label prior every arm must clear to have learned
    the task, which the report sets beside the arms. Read off the dev labels alone, so a
    finished study gets it from any later sweep of it, with nothing trained.

    Raises:
        ConfigError: the study's floor counted another number of dev rows than the grid's
            `dev_limit` gives (its new runs would sit beside the old as more seeds of one arm).
    """
    with work_lock(ctx.grid, f"floor-{task.name}"):  # shards: one row, not one each
        dev = load_split(task.folder, task.name, "dev", limit=ctx.grid.dev_limit)
        had = [r for r in ctx.builds.rows() if (r["task"], r["how"]) == (task.name, FLOOR)]
        if had:  # recorded: only check the dev rows are still the ones it counted
            if had[0]["rows"] and int(had[0]["rows"]) != len(dev):
                raise ConfigError(
                    f"{ctx.builds.path}: this study scores {task.name} on {had[0]['rows']} dev "
                    f"rows, this grid's dev_limit gives {len(dev)}; use another study folder, "
                    "or the same dev_limit"
                )
            return
        if not (floor := one_answer_scores(task.name, dev.labels)):
            return  # regression: no classes, no floor
        ctx.builds.append(
            {
                "task": task.name,
                "teacher": None,
                "cache": "one-answer",
                "how": FLOOR,
                "source": task.folder,
                "seconds": 0.0,
                "device": None,  # read off the labels: no device computed it
                "bytes": None,
                "rows": len(dev),
                "dev": json.dumps(floor),
                "code_version": ctx.version,
                "timestamp": now(),
            }
        )


def _teacher_row(
    ctx: Context,
    task: TaskRef,
    key: str,
    how: str,
    source: str,
    seconds: float,
    size: int | None,
    dev: dict[str, float],
) -> dict:
    """A teacher's row of the builds table: fine-tuned here (`finetune`) or by another study
    (`reuse`), with the dev scores the report sets the students against."""
    return {
        "task": task.name,
        "teacher": key,
        "cache": "teacher",
        "how": how,
        "source": source,
        "seconds": seconds,
        "device": ctx.device,
        "bytes": size,
        "rows": None,
        "dev": json.dumps(dev),
        "code_version": ctx.version,
        "timestamp": now(),
    }


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


# --- running ----------------------------------------------------------------------------------

Runner = Callable[[RunSpec, Context], dict]


def train_run(run: RunSpec, ctx: Context) -> dict:
    """Train one run with `hsktrain fit` from its cache (an online arm: with its teacher live);
    return the row's measured fields."""
    grid, arm = ctx.grid, run.arm
    cache = ctx.cache_for(run)
    out = ctx.run_dir(run)
    h, p = epochs(grid, run)
    options = fit_options(grid, arm)
    if arm.online:  # the same rows, chunks and selection as the cache, targets computed live
        task, sel = run.task, cache_plan(arm)
        source = dict(
            online_teacher=ctx.teachers[task.name].path,
            data=task.folder,
            task=task.name,
            limit=rows_limit(grid, task, arm.rows),
            chunk_rows=grid.chunk_rows,
            hsk=arm.hsk,
            length=sel.length,
            width_strategy=sel.width_strategy,
            l_top=sel.l_top,
            batch_threshold=True,
        )
        options.setdefault("max_length", task.max_length)
    else:
        source = dict(cache=str(cache))
    cfg = FitConfig(
        out=str(out),
        **source,
        student=grid.student,
        mode="two-stage" if arm.kind == "hsk" else arm.kind,
        hsk_epochs=h if arm.kind == "hsk" else None,
        pred_epochs=p,
        seed=run.seed,
        dev_data=run.task.folder,
        dev_limit=grid.dev_limit,
        **options,
    )
    result = fit_or_resume(cfg, ctx)
    log = read_log(out)
    stage, epoch = best_epoch(log, run.task.name)
    if not grid.keep_checkpoints:  # metrics.jsonl and config.json stay
        for sub in ("best", "last"):
            shutil.rmtree(out / sub, ignore_errors=True)
    m = open_cache(str(cache)).info
    hsk = arm.kind == "hsk"
    return {
        "metrics": result.metrics,
        "warning": result.warning,  # said, not stored: the report's tables carry the scores
        "best_stage": stage,
        "best_epoch": epoch,
        "log": log_summary(log, run.task.name),
        "train_seconds": result.seconds,
        "hsk_fraction": m.stats.hsk_fraction if hsk else 0.0,
        "cache_bytes": sum(o.bytes for o in (m.objects or {}).values())
        if hsk and not arm.online
        else None,
    }


def fit_or_resume(cfg: FitConfig, ctx: Context) -> FitResult:
    """`fit` into `cfg.out`, continuing from its last saved epoch the run a kill cut short there
    when none of its settings changed (else from scratch): a sweep cut at a time limit loses
    at most an epoch of a fine-tune or a run."""
    out = Path(cfg.out)
    if can_resume(out, cfg):
        ctx.say(f"  resuming {out} from its last checkpoint")
        cfg = replace(cfg, resume=True)
    else:
        shutil.rmtree(out, ignore_errors=True)
    return fit(cfg, show_progress=ctx.show_progress)


@dataclass
class Sweep:
    """A resolved study: its runs, which are done, and the context that runs the rest."""

    grid: Grid
    tasks: list[TaskRef]
    runs: list[RunSpec]
    done: list[RunSpec]
    pending: list[RunSpec]
    ctx: Context


def plan_sweep(grid: Grid, train: bool, show_progress: bool = True, say=print) -> Sweep:
    """Resolve tasks and teachers (fine-tuning them when `train`), expand the grid, and split
    the runs into done and pending by the results table.

    Raises:
        HskError: a bad grid, a missing task or teacher, a table of other settings.
    """
    tasks = resolve_tasks(grid)
    base = base_teacher(grid)
    runs = expand_grid(grid, tasks, teacher_depth(base))
    ctx = Context(grid, {}, runs, builds_table(grid.study), code_version(), show_progress, say)
    for task in tasks:
        ctx.teachers[task.name] = resolve_teacher(grid, task, base, ctx if train else None)
        if train:
            note_floor(ctx, task)
    keys = {name: t.key for name, t in ctx.teachers.items()}
    rows = results_table(grid.study).rows()
    for line in other_teachers(keys, rows):
        say(f"note: {line}")
    done, pending = split_done(grid, runs, keys, rows)
    return Sweep(grid, tasks, runs, done, pending, ctx)


def run_sweep(
    grid: Grid,
    runner: Runner | None = None,
    show_progress: bool = True,
    say=print,
    shard: tuple[int, int] = (0, 1),
    prepare: bool = False,
):
    """Run every pending run of the grid, appending one row to results.csv (and logs.csv) after
    each.

    Args:
        grid: the study.
        runner: trains one run and returns its measured fields (`train_run`; tests inject a
            fake): metrics, best_stage, best_epoch, train_seconds, hsk_fraction, cache_bytes,
            and `log` (logs.csv's fields, `log_summary`; without it, no logs.csv row).
        show_progress: progress bars of builds and fits.
        say: where one line per run goes.
        shard: (i, n): run only the grid's runs at positions i, i + n, i + 2n, ...: n sweeps
            (one per GPU, say) share one study, its tables and caches, and split its runs.
        prepare: fine-tune the teachers and make every cache the pending runs read (built, or
            cut out of their family's largest), and train nothing: the teacher's side alone.

    Returns:
        The Sweep (its `pending`: the runs this call ran).
    """
    sweep = plan_sweep(grid, True, show_progress, say)
    table, logs = results_table(grid.study), logs_table(grid.study)
    say(f"{len(sweep.runs)} runs in the grid, {len(sweep.done)} already in {table.path}")
    part, parts = shard
    if parts > 1:
        mine = {
            (r.task.name, r.config, r.seed) for k, r in enumerate(sweep.runs) if k % parts == part
        }
        sweep.pending = [r for r in sweep.pending if (r.task.name, r.config, r.seed) in mine]
        say(f"shard {part}/{parts}: {len(sweep.pending)} of them run here")
    if prepare:
        caches = {sweep.ctx.cache_for(run) for run in sweep.pending}
        say(f"teachers and {len(caches)} cache(s) of {len(sweep.pending)} pending runs ready")
        return sweep
    for i, run in enumerate(sweep.pending, 1):
        say(f"[{i}/{len(sweep.pending)}] {run.task.name} {run.config} seed {run.seed}")
        got = (runner or train_run)(run, sweep.ctx)
        teacher = sweep.ctx.teachers[run.task.name]
        row = planned(grid, run) | {
            "teacher": teacher.key,
            "teacher_depth": teacher.depth,
            **{f"dev_{k}": v for k, v in got["metrics"].items() if k in METRICS},
            **{
                k: got.get(k)
                for k in (
                    "best_stage",
                    "best_epoch",
                    "train_seconds",
                    "hsk_fraction",
                    "cache_bytes",
                )
            },
            "device": sweep.ctx.device,
            "code_version": sweep.ctx.version,
            "timestamp": now(),
        }
        table.append(row)
        if got.get("log"):  # after its results row: a kill between them loses the summary only
            logs.append({k: row[k] for k in KEY} | got["log"])
        scores = ", ".join(f"{k} {v:.4f}" for k, v in got["metrics"].items())
        say(f"  dev {scores or '-'} ({got.get('train_seconds') or 0:.0f} s)")
        if got.get("warning"):
            say(f"  warning: {got['warning']}")
    return sweep
