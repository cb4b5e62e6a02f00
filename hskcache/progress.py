"""Rich progress bars shared by long-running commands."""

from __future__ import annotations

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

        def advance(n: int, info: str = "") -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:,.1f} {unit}/s" if speed else "", info=info)

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
        yield lambda n: bar.advance(task, n)
