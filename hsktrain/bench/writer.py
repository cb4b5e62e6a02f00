"""The one results writer of every bench: the markdown results file (`--results`), its plot
(`--plot`), and what the terminal shows (the JSON of `--json`, else the targets table).

Each bench describes how its result reads in a `Report` (`step_writer`, `build_writer`,
`e2e_writer`); writing, plotting, the targets table and the JSON are done here, the same way
for all of them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from hskcache.devices import device_name
from hsktrain.bench.verdict import shown


@dataclass(frozen=True)
class Report:
    """How one bench's result reads."""

    lines: Callable[[dict, str], list[str]]  # (result, command) -> the results file's lines
    title: Callable[[dict], str]  # the terminal table's title, above the targets
    plot: Callable[[dict, Path], None] | None = None  # draws the PNG of --plot
    plot_at: int = 0  # the results file's line the PNG's image link goes before
    plot_alt: str = ""  # the image link's alt text


@dataclass(frozen=True)
class Outputs:
    """Where a bench run's figures go besides the terminal."""

    results: Path | None = None  # --results: the markdown file
    plot: Path | None = None  # --plot: the PNG (with --results)
    as_json: bool = False  # --json: print the whole result, not the targets table


def check_outputs(out: Outputs, workdir: str | None) -> None:
    """Refuse a place the bench cannot write before minutes of measuring.

    Raises:
        ConfigError: one line naming the option and the path.
    """
    from hsktrain.outputs import output_file, output_folder

    for path, flag in ((out.results, "--results"), (out.plot, "--plot")):
        if path is not None:
            output_file(path, flag)
    if workdir is not None:
        output_folder(workdir, "--workdir")


def markdown(result: dict, report: Report, command: str, png: str | None = None) -> str:
    """The results file of one run, by `command`; `png` names the plot it links to."""
    lines = report.lines(result, command)
    if png is not None:
        lines.insert(report.plot_at, f"![{report.plot_alt}]({png})\n")
    return "\n".join(lines)


def finish(result: dict, report: Report, out: Outputs, command: str) -> str | Table:
    """Every bench's ending: write the results file (and plot) when asked, then return what the
    terminal shows: the JSON (a string to print as it is), or the targets table."""
    if out.results is not None:
        png = out.plot if report.plot is not None else None
        if png is not None:
            png.parent.mkdir(parents=True, exist_ok=True)
            report.plot(result, png)
        text = markdown(result, report, command, png and png.name)
        out.results.parent.mkdir(parents=True, exist_ok=True)
        out.results.write_text(text)
    if out.as_json:
        return dumps(result)
    return targets_table(report.title(result), result["targets"])


def dumps(result: dict) -> str:
    """A result as JSON (numpy figures as floats)."""
    return json.dumps(result, indent=2, default=float)


def targets_table(title: str, targets: dict) -> Table:
    """The terminal report of every bench: each target's value, bound and verdict."""
    table = Table("target", "value", "bound", "met", title=title)
    style = {True: "", False: "[red]", None: "[yellow]"}
    for k, v in targets.items():
        table.add_row(k, _value(v), v["target"], style[v["met"]] + shown(v))
    return table


def _value(v: dict) -> str:
    """A verdict's figure, with its spread where it has one (1.026 +- 0.012)."""
    return f"{v['value']:.3f}" + (f" +- {v['spread']:.3f}" if "spread" in v else "")


def targets_markdown(targets: dict) -> list[str]:
    """The Markdown table of every target (value, bound, met) that all results files end with."""
    return [
        "| target | value | bound | met |",
        "|---|---|---|---|",
        *[
            f"| {k} | {_value(v)} | {v['target']} | {'**no**' if v['met'] is False else shown(v)} |"
            for k, v in targets.items()
        ],
    ]


def load_line(load: dict) -> str:
    """The machine's load average around a run: timings on a shared machine move with it."""
    fmt = lambda xs: " / ".join(f"{x:.2f}" for x in xs)  # noqa: E731
    return (
        f"Load average (1 / 5 / 15 min): {fmt(load['start'])} at the start, "
        f"{fmt(load['end'])} at the end ({os.cpu_count()} cores); ratios within one run are "
        "what counts."
    )


def device_words(result: dict) -> str:
    """Where a bench computed: `device cpu`, or `device cuda (NVIDIA H200), bf16 autocast`."""
    amp = result.get("amp", "none")
    where = f"device {device_name(result['device'])}"
    return where if amp == "none" else f"{where}, {amp} autocast"
