"""What one sweep's runner shares (`Context`): its grid, teachers and tables, where each cache
and run goes, and how a run's cache is made: its family's largest built once by the teacher,
the rest cut out of it by `hskcache derive`, a direct build where the cut is not exact. Shards of
one study make each cache once, under `work_lock`.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from hskcache.build import build_cache
from hskcache.config import BuildConfig, DeriveConfig
from hskcache.derive import derive_cache
from hskcache.devices import device_name
from hskcache.errors import ConfigError, HskError
from hskcache.hsk import default_l_top
from hskcache.reader import open_cache
from hskcache.shapes import student_shape
from hsktrain.study.caches import CachePlan, cache_plan, family_source
from hsktrain.study.grid import Grid
from hsktrain.study.runs import RunSpec, TaskRef, rows_limit
from hsktrain.study.tables import Table, now
from hsktrain.study.teachers import TeacherRef


@contextmanager
def work_lock(grid: Grid, name: str) -> Iterator[None]:
    """Hold `name` (a teacher, a cache family) in the study's work folder exclusively, by an
    flock that dies with its process: the shards of one study (`sweep --shard`) fine-tune each
    teacher and make each cache once, and other families meanwhile."""
    locks = grid.work / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    with (locks / f"{name}.lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@dataclass
class Context:
    """What the runner of one sweep shares: settings, where things go, how to report."""

    grid: Grid
    teachers: dict[str, TeacherRef]  # by task name
    runs: list[RunSpec]  # every run of the grid (families are planned over all of them)
    builds: Table
    version: str
    show_progress: bool = True
    say: Callable[[str], None] = print

    @cached_property
    def device(self) -> str:
        """The tables' `device` cell of everything this sweep runs."""
        return device_name(self.grid.fit.get("device", "cpu"))

    @property
    def n_student(self) -> int:
        return student_shape(self.grid.student)["num_hidden_layers"]

    def teacher_folder(self, task: TaskRef) -> str:
        """The task's teacher key as a folder name: caches and runs live under it, so a
        re-tuned teacher never mixes with the old one's."""
        return self.teachers[task.name].key.replace("@", "-")

    def cache_dir(self, task: TaskRef, sel: CachePlan) -> Path:
        t = self.teacher_folder(task)
        hsk = sel.hsk(self.n_student + 1, task.max_length)
        name = f"{hsk}-{sel.length}-{sel.width_strategy}-l_top{sel.l_top}"
        name += f"-{sel.rows.name}" if sel.rows.name else ""
        return self.grid.work / "caches" / t / task.name / name

    def run_dir(self, run: RunSpec) -> Path:
        t = self.teacher_folder(run.task)
        name = run.config.replace("/", "-")
        return self.grid.work / "runs" / t / run.task.name / name / f"seed{run.seed}"

    def cache_for(self, run: RunSpec) -> Path:
        """The run's cache, built (its family's source first) or cut out when missing. The
        prediction-only arm reads the task's smallest cache of its rows: rows, labels and
        logits are the same in every such cache, and so are the batches. The CE-only arm reads
        the smallest plain one, else the smallest with extra rows: it reads their labelled rows
        alone, the same ones."""
        task = run.task
        sels = [cache_plan(r.arm) for r in self.runs if r.task == task and r.arm.kind == "hsk"]
        if run.arm.kind != "hsk":
            l_top = default_l_top(self.teachers[task.name].depth)
            fallback = CachePlan(1, 1, 0.1, "left", "magnitude", l_top, run.arm.rows)
            mine = [s for s in sels if s.rows == run.arm.rows]
            if run.arm.kind == "ce" and not mine and sels:
                mine = [s for s in sels if s.rows == sels[0].rows]
            sel = min(mine, key=lambda s: (s.layers * s.tokens * s.width, str(s)), default=fallback)
        else:
            sel = cache_plan(run.arm)
        source = family_source([s for s in sels if s.family == sel.family] or [sel])
        family = "-".join(self.cache_dir(task, source).parts[-3:])  # teacher, task, cache
        with work_lock(self.grid, family):  # another shard may be making it now
            src_dir = self._build(task, source)
            return src_dir if sel == source else self._derive(task, src_dir, sel)

    def _complete(self, path: Path) -> bool:
        try:
            open_cache(str(path))
            return True
        except HskError:
            return False

    def _build(self, task: TaskRef, sel: CachePlan, note: str = "") -> Path:
        out = self.cache_dir(task, sel)
        if self._complete(out):
            return out
        teacher = self.teachers[task.name]
        cfg = BuildConfig(
            data=task.folder,
            task=task.name,
            out=str(out),
            split="train",
            hsk=sel.hsk(self.n_student + 1, task.max_length),
            length=sel.length,
            width_strategy=sel.width_strategy,
            l_top=sel.l_top,
            student_layers=self.n_student,
            student=[self.grid.student],
            teacher=teacher.path,
            max_length=task.max_length,
            limit=rows_limit(self.grid, task, sel.rows),
            labelled=sel.rows.labelled,
            augment=sel.rows.augment,
            chunk_rows=self.grid.chunk_rows,
            device=self.grid.fit.get("device", "cpu"),
            # the stored init made as [fit] asks, so fit takes it instead of refusing it
            select=self.grid.fit.get("select") or "prefix",
            layer_choice=self.grid.fit.get("layer_choice"),
        )
        # a killed build's folder: this call computes its rest, so its seconds are not the
        # build's (the estimate leaves such rows out, the report counts them)
        how = "build" + note + (" (resumed)" if out.exists() else "")
        self.say(f"build {out}")
        t0 = time.perf_counter()
        build_cache(cfg, self.show_progress)
        self._record(task, out, how, teacher.path, time.perf_counter() - t0)
        return out

    def _derive(self, task: TaskRef, src: Path, sel: CachePlan) -> Path:
        """Cut `sel` out of `src` (hskcache derive); a direct build where the cut is not exact.
        The one place to change how a smaller cache is made."""
        out = self.cache_dir(task, sel)
        if self._complete(out):
            return out
        cfg = DeriveConfig(
            src=str(src),
            out=str(out),
            hsk=sel.hsk(self.n_student + 1, task.max_length),
            length=sel.length,
            width_strategy=sel.width_strategy,
            l_top=sel.l_top,
            chunk_rows=self.grid.chunk_rows,
        )
        t0 = time.perf_counter()
        try:
            derive_cache(cfg, self.show_progress)
        except ConfigError as e:  # not an exact cut of the source: run the teacher
            self.say(f"derive refused ({e}); building {out} directly")
            return self._build(task, sel, " (not derivable)")
        self._record(task, out, "derive", str(src), time.perf_counter() - t0)
        return out

    def _record(self, task: TaskRef, out: Path, how: str, source: str, seconds: float) -> None:
        m = open_cache(str(out)).info
        self.builds.append(
            {
                "task": task.name,
                "teacher": self.teachers[task.name].key,
                "cache": out.name,
                "how": how,
                "source": source,
                "seconds": seconds,
                "device": self.device,
                "bytes": sum(o.bytes for o in (m.objects or {}).values()),
                "rows": m.counts.num_examples,
                "dev": None,
                "code_version": self.version,
                "timestamp": now(),
            }
        )
