"""What both CLIs share: the --debug switch, errors as one red line, the flags a user gave,
real defaults in --help, and the tables the commands print.

Nothing heavy is imported at module level (no torch, transformers or zarr): `--help` stays
fast. Functions that need them import them where they run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand

from hskcache.devices import PIN_ENV, pin_cpu_kernels
from hskcache.errors import HskError
from hskcache.storage.remote import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    RETRIES_ENV,
    TIMEOUT_ENV,
    outside_failure,
)

console = Console()
err = Console(stderr=True)
_state = {"debug": False}


def main(
    debug: Annotated[bool, typer.Option(help="Show tracebacks on errors.")] = False,
    timeout: Annotated[
        float,
        typer.Option(
            envvar=TIMEOUT_ENV,
            help="Seconds an object-storage connect or read may take before it is retried.",
        ),
    ] = DEFAULT_TIMEOUT,
    retries: Annotated[
        int,
        typer.Option(
            envvar=RETRIES_ENV,
            help="Attempts per object-storage call; then the command stops with one line.",
        ),
    ] = DEFAULT_RETRIES,
    pin_kernels: Annotated[
        bool,
        typer.Option(
            envvar=PIN_ENV,
            help="CPU float kernels on their AVX2 code paths: the same command on another "
            "Intel x86 CPU (AVX2, same thread count) gives the same weights to the bit, e.g. a "
            "teacher fine-tuned again (not on an AMD CPU: MKL pins Intel's only); 1.4-1.5x "
            "slower on an AVX-512 CPU.",
        ),
    ] = False,
):
    """The options every command of both CLIs takes before its name."""
    _state["debug"] = debug
    if pin_kernels:  # before the command imports torch: read at its first kernel
        pin_cpu_kernels()
    # through the environment: read where a store is opened, inherited by child processes
    os.environ[TIMEOUT_ENV], os.environ[RETRIES_ENV] = str(timeout), str(retries)


def quiet_transformers() -> None:
    """Keep third-party load reports and progress bars out of our output."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def run_guarded(fn, *args, **kwargs):
    """Run a command body; an HskError, or a failure of the disk, network or object store under
    it, becomes one red line and exit code 1 (unless --debug)."""
    try:
        return fn(*args, **kwargs)
    except HskError as e:
        fail(str(e))
    except Exception as e:
        line = outside_failure(e)
        if line is None:
            raise
        fail(line)


def fail(line: str):
    """Print `line` as the one red error line and exit 1; with --debug, re-raise the exception
    being handled instead (call it from an `except` block)."""
    if _state["debug"]:
        raise
    # escape: a message naming `list[int]` must not lose `[int]` as rich markup
    err.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1) from None


def say(line: str) -> None:
    """Print a line as it is (no markup, highlighting or wrapping)."""
    console.print(line, soft_wrap=True, highlight=False, markup=False)


def given(ctx: typer.Context, *skip: str) -> dict:
    """The options the user typed (or set through the environment), by parameter name.

    An option left out is absent, whatever its signature default, so a TOML file's value
    (`merge_file`) or the config's own default applies; `--no-verify` is given, as False.
    """
    # by name: typer carries its own copy of click, whose ParameterSource is another enum
    typed = ("COMMANDLINE", "ENVIRONMENT")
    return {
        k: v
        for k, v in ctx.params.items()
        if k not in skip and getattr(ctx.get_parameter_source(k), "name", None) in typed
    }


def config_defaults(cls, **described: str) -> dict[str, object]:
    """A config dataclass's field defaults, for --help; `described` names what None means."""
    plain = {
        f.name: f.default
        for f in dataclasses.fields(cls)
        if f.default is not dataclasses.MISSING and f.default is not None
    }
    return {**plain, **described}


def shows_defaults(defaults: Callable[[], dict[str, object]]) -> type[TyperCommand]:
    """A command class whose --help shows `defaults()` for its options.

    The options default to None in the signature so that a TOML file can fill what the user
    did not type (`given`); the real defaults are swapped in only while the help is drawn, and
    put back, so parsing never sees them. `defaults` runs only then: it may import the config
    dataclass (and torch, about a second) without slowing `--help` of the CLI or any command.
    """

    class Command(TyperCommand):
        def format_help(self, ctx, formatter) -> None:
            shown = defaults()
            params = [p for p in self.params if p.name in shown and p.default is None]
            for p in params:
                p.default = shown[p.name]
            try:
                super().format_help(ctx, formatter)
            finally:
                for p in params:
                    p.default = None

    return Command


def metrics_table(title: str, rows: dict[str, dict]) -> Table:
    """One row of metrics per model, a column per metric name."""
    names = sorted({k for m in rows.values() for k in m})
    table = Table(*(["model"] + names), title=title)
    for label, m in rows.items():
        table.add_row(label, *(f"{m[k]:.4f}" if k in m else "-" for k in names))
    return table


def print_inspect(info: dict) -> None:
    """`hskcache inspect`: the manifest in words, then one line per array."""
    head = Table.grid(padding=(0, 2))
    head.add_column(no_wrap=True)
    head.add_column(overflow="fold")
    status = info["status"]
    colour = "green" if status == "complete" else "yellow"
    sel, storage = info["selection"], info["storage"]
    untrained = "  [yellow](untrained head)[/yellow]" if info["teacher_head_initialised"] else ""
    rows = [
        ("path", info["path"]),
        ("status", f"[{colour}]{status}[/{colour}]"),
        ("teacher", info["teacher"] + untrained),
        ("data", info["data"]),
        ("max length", str(info["max_length"])),
        (
            "selection",
            f"{sel['config']}: {sel['tokens_kept']} tokens ({sel['length']}), width "
            f"{sel['width_kept']} ({sel['width_strategy']})",
        ),
        ("layers", "; ".join(sel["layers"])),
        (
            "storage",
            f"{storage['value_dtype']}, compressor {storage['compressor']}, "
            f"{storage['chunk_rows']} rows/chunk, {info['counts']['num_chunks']} chunks in "
            f"{info['counts']['num_shards']} shards",
        ),
        ("identity", info["identity"]),
        ("content", f"{info['content']}  (name {info['name']})"),
        *_kit_rows(info["kit"]),
    ]
    if info["stats"]:
        s = info["stats"]
        full = s["full_fp16_bytes_per_example"]
        rows.append(
            (
                "size",
                f"{info['total_bytes']:,} B = {s['bytes_per_example']:.0f} B/example; full fp16"
                f" HSK {full:,.0f} B/example ({full / s['bytes_per_example']:.0f}x)",
            )
        )
        floor = info["floor_bytes_per_example"]
        rows.append(
            (
                "vs floor",
                f"{s['bytes_per_example'] / floor:.2f}x the kept values in fp16 ({floor:,.0f} "
                "B/example)",
            )
        )
        rows.append(
            (
                "HSK kept",
                f"{s['hsk_fraction']:.4%} of all hidden-state values "
                f"(mean length {s['mean_length']:.1f} tokens)",
            )
        )
    if "targets" in info:
        rows += _target_rows(info["targets"])
    for k, v in rows:
        head.add_row(f"[bold]{k}[/bold]", v)
    console.print(head)
    table = Table("array", "shape", "dtype", "rows/chunk", "bytes")
    for a in info["arrays"]:
        table.add_row(
            a["name"], str(tuple(a["shape"])), a["dtype"], str(a["chunk_rows"]), f"{a['bytes']:,}"
        )
    console.print(table)


def _target_rows(targets: dict) -> list[tuple[str, str]]:
    """inspect --stats: the scale of what a student is trained to match."""
    per_layer = "; ".join(
        f"teacher {la['teacher_layer']}: {la['zero_prediction_loss']:.4f} "
        f"(max |value| {la['max_abs']:.2f})"
        for la in targets["layers"]
    )
    rows = [
        (
            "HSK targets",
            f"loss of an all-zero prediction {targets['zero_prediction_loss']:.4f} (read an "
            f"HSK stage's train loss as a share of it); per layer {per_layer}",
        )
    ]
    if targets["teacher_entropy"] is not None:
        rows.append(
            (
                "predictions",
                f"teacher entropy {targets['teacher_entropy']:.4f} nats/example (the floor of "
                f"the prediction stage's loss at T = 1); agrees with the labels on "
                f"{targets['teacher_label_accuracy']:.2%}",
            )
        )
    return rows


def _kit_rows(kit: dict) -> list[tuple[str, str]]:
    """inspect's lines on what the cache carries for training without the teacher."""
    tok = kit["tokenizer"]
    students = "; ".join(
        f"{s['name']} ({s['shape']['num_hidden_layers']}L-{s['shape']['hidden_size']}H, "
        f"teacher layers {s['teacher_layers']}, {s['bytes']:,} B)"
        for s in kit["students"]
    )
    teacher = (
        f"bundled ({kit['teacher_bytes']:,} B; hskcache export-teacher CACHE DIR)"
        if kit["teacher_bundled"]
        else "not bundled (build --bundle-teacher)"
    )
    return [
        ("tokenizer", f"{tok['class']} (sha256 {tok['sha256'][:12]}), {', '.join(tok['files'])}"),
        ("students", students or "none stored (build --student NAME)"),
        ("teacher kit", teacher),
    ]


def print_caches(caches: list[dict], url: str, match: str | None) -> None:
    """`hskcache ls`: one row per cache found under `url`."""
    from rich import box
    from rich.filesize import decimal

    if not caches:
        say(f"no caches under {url}" + (f" match '{match}'" if match else ""))
        return
    short = lambda s: (s or "?")[:8]  # noqa: E731
    base = url.rstrip("/") + "/"
    head = ("cache", "identity", "content", "teacher", "data", "split", "selection", "rows")
    head += ("size", "status")
    rows = [
        (
            c["url"].removeprefix(base) or ".",
            (c["identity"] or "?")[:12],
            (c["content"] or "?")[:12],
            f"{c['teacher']['name'] or '?'} {short(c['teacher']['weights_sha256'])}",
            f"{c['data']['task'] or '?'} {short(c['data']['fingerprint'])}",
            c["data"]["split"] or "?",
            c["selection"] or "?",
            f"{c['rows']:,}" if c["rows"] is not None else "?",
            decimal(c["bytes"]),
            c["status"],
        )
        for c in caches
    ]
    if not console.is_terminal:  # piped: one tab-separated line a cache, never folded
        for row in (head, *rows):
            print("\t".join(row))  # not rich: it would expand the tabs
        return
    # About 150 columns show every row on one line; narrower terminals fold the long cells.
    table = Table(title=f"{len(caches)} cache(s) under {url}", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in head:
        fixed = col in ("identity", "content", "status")
        table.add_column(
            col,
            no_wrap=fixed,
            min_width=12 if fixed and col != "status" else None,
            overflow="fold",
            justify="right" if col in ("rows", "size") else "left",
        )
    for row in rows:
        colour = {"complete": "green", "building": "yellow", "partial": "yellow"}
        colour = colour.get(row[-1], "red")
        table.add_row(*map(escape, row[:-1]), f"[{colour}]{row[-1]}[/{colour}]")
    console.print(table)


def print_transfer(report, verb: str) -> None:
    """`push` / `pull`: what was copied, or that the destination already held the cache."""
    if report.already_there:
        console.print(
            f"[green]already there[/green] {report.destination}: it holds this cache "
            f"(identity {report.identity[:12]}); nothing to copy",
            highlight=False,
            soft_wrap=True,
        )
        return
    console.print(
        f"[green]complete[/green] {report.destination}  ({verb} {report.copied} objects, "
        f"{report.bytes_copied:,} B; {report.skipped} already there and verified)",
        highlight=False,
        soft_wrap=True,
    )
