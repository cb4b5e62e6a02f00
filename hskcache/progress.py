"""Rich progress bars shared by long-running commands.

Drawn into a file or a pipe (a background run's log, CI), rich renders a bar once, when it
ends; an hour's fine-tune would leave its log empty until then. There each bar also prints its
line every `LOG_EVERY_S` seconds, so `tail` on the log shows how far it got and its ETA.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

LOG_EVERY_S = 60.0


def _logger(bar: Progress) -> Callable[[], None]:
    """A call that prints `bar`'s lines when `LOG_EVERY_S` seconds have passed since the last
    print, on a console that is not a terminal; nothing on a terminal (rich redraws it there)."""
    if bar.console.is_terminal:
        return lambda: None
    last = time.monotonic()

    def log() -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= LOG_EVERY_S:
            last = now
            bar.console.print(bar.make_tasks_table(bar.tasks))

    return log


@contextmanager
def progress_bar(
    label: str, total: int, completed: int = 0, enabled: bool = True, unit: str = "ex"
) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n, info="")`; the bar shows done/total, rate, elapsed, ETA and `info`."""
    if not enabled:
        yield lambda n, info="": None
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(label, total=total, completed=completed, rate="", info="")
        log = _logger(bar)

        def advance(n: int, info: str = "") -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:,.1f} {unit}/s" if speed else "", info=info)
            log()

        yield advance


@contextmanager
def bytes_bar(label: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield `advance(nbytes)` for a transfer bar: bytes done/total, bytes/s, elapsed, ETA.

    Safe to call from worker threads (rich's Progress locks its own updates). Drawn on stderr so
    a command's own output stays clean.
    """
    if not enabled:
        yield lambda n: None
        return

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=total)
        log = _logger(bar)

        def advance(n: int) -> None:
            bar.advance(task, n)
            log()

        yield advance
