"""A study's tables: `results.csv` (one row per finished run), `logs.csv` (how each run learned)
and `builds.csv` (every fine-tune, build and derive), appended one flushed row at a time, and
which runs they already hold."""

from __future__ import annotations

import csv
import fcntl
import io
import os
import subprocess
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from hskcache import __version__
from hskcache.data import utf8_text
from hskcache.errors import ConfigError, DataFormatError, HskError
from hsktrain.metrics import METRICS
from hsktrain.study.grid import Grid
from hsktrain.study.runs import RunSpec, epochs, parse_recipe, recipe, rows_limit

COLUMNS = [
    "task",
    "teacher",
    "teacher_depth",
    "student",
    "config",
    "kind",
    "axis",
    "hsk",
    "length",
    "width_strategy",
    "l_top",
    "hsk_fraction",
    "seed",
    "hsk_epochs",
    "pred_epochs",
    "limit",
    "recipe",
    *(f"dev_{m}" for m in METRICS),
    "best_stage",
    "best_epoch",
    "train_seconds",
    "device",
    "cache_bytes",
    "code_version",
    "timestamp",
]
BUILD_COLUMNS = [
    "task",
    "teacher",
    "cache",
    "how",
    "source",
    "seconds",
    "device",
    "bytes",
    "rows",
    "dev",
    "code_version",
    "timestamp",
]
# builds.csv's `how` of a task's one-answer floor (no teacher, no cache: its dev labels alone)
FLOOR = "floor"
KEY = ("task", "teacher", "config", "seed")  # one run: a second row of it would count twice
# logs.csv: how each run learned, from its metrics.jsonl (`runlog.log_summary` says what each is)
HSK_SHARES = ("hsk_start", "hsk_end")  # the HSK loss as shares of an all-zero prediction's
LOG_COLUMNS = [*KEY, *HSK_SHARES, "dev_curve", "train_end"]
# what `hsktrain report` reads as numbers
NUMBERS = {"seed": int, "teacher_depth": int, "hsk_fraction": float, "train_seconds": float}
NUMBERS |= {f"dev_{m}": float for m in METRICS}
# a finished row must match these (`recipe`: RECIPE's fit options)
BUDGET = ("student", "hsk_epochs", "pred_epochs", "limit", "recipe")


def teacher_parts(key: str) -> tuple[str, str]:
    """A `teacher` cell, `name@sha12` (`teachers.teacher_key`), as its name and its weights'
    sha12: the same weights under two names are one teacher, one name with two shas two."""
    name, _, sha = key.rpartition("@")
    return name, sha


def code_version() -> str:
    """`git` short hash of this checkout, `-dirty` with uncommitted changes; else the version."""
    root = Path(__file__).resolve().parents[1]
    try:
        git = lambda *a: subprocess.run(  # noqa: E731
            ["git", *a], cwd=root, capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
        dirty = "-dirty" if git("status", "--porcelain") else ""
        return git("rev-parse", "--short", "HEAD") + dirty
    except (OSError, subprocess.SubprocessError):
        return f"v{__version__}"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Table:
    """A CSV file of rows, appended one flushed and fsynced row at a time.

    `key`: the columns that name a row (a second row of the same key is refused, not counted
    twice); `numbers`: the columns read as numbers (an empty cell: none)."""

    def __init__(
        self, path: Path, columns: list[str], key: tuple[str, ...] = (), numbers: dict | None = None
    ):
        self.path, self.columns, self.key, self.numbers = path, columns, key, numbers or {}

    def rows(self) -> list[dict]:
        """Every row, each checked; a partial last line (a kill mid-write) is left out, as
        `append` cuts it off.

        Raises:
            HskError: another version's columns.
            DataFormatError: a file that is not UTF-8, or a line with too few or too many
                fields, a non-number in a number column, or a key seen on an earlier line.
        """
        if not self.path.is_file():
            return []
        text = utf8_text(self.path)
        reader = csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1], newline=""))
        self._check_header(reader.fieldnames or [])
        rows, seen = [], {}
        for row in reader:
            self._check_row(row, reader.line_num, seen)
            rows.append(row)
        return rows

    def _check_header(self, have: list[str]) -> None:
        if have == self.columns:
            return
        missing = [c for c in self.columns if c not in have]
        extra = [c for c in have if c not in self.columns]
        what = (
            "; ".join(
                [f"lacks {', '.join(missing)}"] * bool(missing)
                + [f"has unknown {', '.join(extra)}"] * bool(extra)
            )
            or "has this version's columns in another order"
        )
        raise HskError(
            f"{self.path}: {what} (written by another version of hsktrain); move the "
            "file away or use another study folder"
        )

    def _check_row(self, row: dict, line: int, seen: dict[tuple, int]) -> None:
        """Refuse what `report` would crash on or count twice; `seen`: key -> its line."""
        bad = lambda what: DataFormatError(str(self.path), what, line)  # noqa: E731
        extra = row.pop(None, [])  # csv.DictReader's: fields past the header's...
        n = sum(v is not None for v in row.values()) + len(extra)  # ...and None for missing ones
        if n != len(self.columns):
            raise bad(f"has {n} fields, the header {len(self.columns)}; fix or remove the line")
        for name, kind in self.numbers.items():
            try:
                kind(row[name] or 0)
            except ValueError:
                what = "an integer" if kind is int else "a number"
                raise bad(f"{name} {row[name]!r} is not {what}; fix or remove the line") from None
        if not self.key:
            return
        key = tuple(row[k] for k in self.key)
        if key in seen:
            run = ", ".join(f"{k} {v}" for k, v in zip(self.key, key, strict=True))
            raise bad(f"duplicates the run of line {seen[key]} ({run}); remove one of them")
        seen[key] = line

    def append(self, row: dict) -> None:
        """Write one row; a partial last line (a kill mid-write) is cut off first. Under an
        exclusive lock of the file: the shards of one study (`sweep --shard`) share it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
            text = io.StringIO()
            w = csv.DictWriter(text, self.columns)
            if f.seek(0, os.SEEK_END) == 0:
                w.writeheader()
            w.writerow({k: _cell(row.get(k)) for k in self.columns})
            f.write(text.getvalue().encode())
            f.flush()
            os.fsync(f.fileno())


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def results_table(study: str | Path) -> Table:
    return Table(Path(study) / "results.csv", COLUMNS, KEY, NUMBERS)


def logs_table(study: str | Path) -> Table:
    numbers = {"seed": int, "hsk_start": float, "hsk_end": float, "train_end": float}
    return Table(Path(study) / "logs.csv", LOG_COLUMNS, KEY, numbers)


def builds_table(study: str | Path) -> Table:
    return Table(Path(study) / "builds.csv", BUILD_COLUMNS, numbers={"seconds": float})


def split_done(
    grid: Grid, runs: list[RunSpec], teacher_of: dict[str, str], rows: list[dict]
) -> tuple[list[RunSpec], list[RunSpec]]:
    """(done, pending): a run is done when the table has its (task, teacher, config, seed).

    Raises:
        ConfigError: a finished row of the same key was trained with another student, epoch
            budget, row limit or fit recipe (mixing them would compare unlike runs).
    """
    table = {tuple(r[k] for k in KEY): r for r in rows}
    done, pending, p = [], [], []
    for run in runs:
        row = table.get((run.task.name, teacher_of.get(run.task.name), run.config, str(run.seed)))
        if row is None:
            pending.append(run)
            continue
        want = planned(grid, run)
        diff = [_differs(k, row[k], _cell(want[k])) for k in BUDGET if row[k] != _cell(want[k])]
        if diff:
            p.append(f"{run.task.name} {run.config} seed {run.seed}: {', '.join(diff)}")
        done.append(run)
    if p:
        raise ConfigError(
            f"{len(p)} finished run(s) in results.csv used other settings, e.g. {p[0]}; use "
            "another study folder, or the same settings"
        )
    return done, pending


def other_teachers(teacher_of: dict[str, str | None], rows: list[dict]) -> list[str]:
    """One line per (task, teacher) whose rows the table holds under the same teacher name but
    other weights than this sweep's: a teacher fine-tuned again (on another CPU the same recipe
    gives other weights) does not continue those rows, so a resumed study starts their arms
    over, keyed apart. Said before any run, so nobody waits hours to find out."""
    counts = Counter(  # the same name, other weights
        (r["task"], r["teacher"])
        for r in rows
        if (key := teacher_of.get(r["task"]))
        and r["teacher"] != key
        and teacher_parts(r["teacher"])[0] == teacher_parts(key)[0]
    )
    return [
        f"{task}: {n} row(s) of results.csv were made with {had}, this sweep's teacher is "
        f"{teacher_of[task]} (other weights: fine-tuned again, here or on another CPU); they do "
        "not count as done, the new rows and the report keep the two teachers apart"
        for (task, had), n in counts.items()
    ]


def tuned_elsewhere(task: str, device: str, builds: list[dict], rows: list[dict]) -> list[str]:
    """One line per teacher of `task` that `builds` records as fine-tuned on devices other than
    `device` and `rows` hold results under: a fine-tune repeats its weights on the same CPU model
    at the same thread count, and pinned on Intel CPUs with AVX2, not elsewhere, so one about to
    run on `device` will likely make another teacher and those rows start over."""
    made: dict[str, set[str]] = {}  # teacher key -> the devices that fine-tuned it
    for b in builds:
        if b["task"] == task and b["how"] == "finetune":
            made.setdefault(b["teacher"], set()).add(b["device"])
    lines = []
    for key, devices in made.items():
        sha = teacher_parts(key)[1]
        n = sum(r["task"] == task and teacher_parts(r["teacher"])[1] == sha for r in rows)
        if n and device not in devices:
            lines.append(
                f"{task}: {n} row(s) of results.csv were made with {key}, fine-tuned on "
                f"{' and '.join(sorted(devices))}; this fine-tune runs on {device}: unless the "
                "two compute alike (the same CPU model; pinned, Intel CPUs with AVX2), its "
                "weights differ and those rows start over"
            )
    return lines


def _differs(key: str, had: str, want: str) -> str:
    """`pred_epochs 2 (this grid: 3)`; for the recipe only the options that differ."""
    if key == "recipe":
        a, b = parse_recipe(had), parse_recipe(want)
        changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        had = " ".join(f"{k}={a.get(k, '-')}" for k in changed)
        want = " ".join(f"{k}={b.get(k, '-')}" for k in changed)
    return f"{key} {had or '-'} (this grid: {want or '-'})"


def planned(grid: Grid, run: RunSpec) -> dict:
    """The row fields a run has before it trains."""
    h, pr = epochs(grid, run)
    a = run.arm
    hsk = a.kind == "hsk"
    return {
        "task": run.task.name,
        "student": grid.student,
        "config": run.config,
        "kind": a.kind,
        "axis": a.axis,
        "hsk": a.hsk or None,
        "length": a.length if hsk else None,
        "width_strategy": a.width_strategy if hsk else None,
        "l_top": a.l_top,
        "seed": run.seed,
        "hsk_epochs": h,
        "pred_epochs": pr,
        "limit": rows_limit(grid, run.task, a.rows),  # with `labelled`: N without extra rows
        "recipe": recipe(grid, a),
    }
