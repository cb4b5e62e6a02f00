"""`hsktrain sweep`, `report`, `compare`: the study recipe's commands, top-level commands of
`hsktrain` (its cli.py adds this app's commands to its own). Thin: parse and call; the work is
imported inside each command so that `--help` does not load torch.
"""

from __future__ import annotations

from typing import Annotated

import typer

from hskcache import options as o
from hskcache.cliutil import console, given, quiet_transformers, run_guarded, say

app = typer.Typer()
Opt = typer.Option


# sweep's options that are not grid keys
_NOT_GRID = ("config", "device", "shard", "dry_run", "prepare", "measure", "quiet")


@app.command()
def sweep(
    ctx: typer.Context,
    config: o.Config = None,
    study: Annotated[str, Opt(help="Study folder: results.csv, builds.csv, report.")] = None,
    tasks: Annotated[str, Opt(help="Comma list: GLUE folders, or names under --glue.")] = None,
    glue: Annotated[
        str,
        Opt(help="Where task names are looked up (default: $GLUE, ../shared/data/glue, the hub)."),
    ] = None,
    teacher: Annotated[str, Opt(help="Fine-tuned teacher (with --finetune: to fine-tune).")] = None,
    finetune: Annotated[
        bool, Opt("--finetune/--no-finetune", help="Fine-tune the teacher once per task.")
    ] = None,
    student: Annotated[str, Opt(help="Student preset or JSON shape.")] = None,
    seeds: Annotated[str, Opt(help="Comma list of seeds.")] = None,
    hsk_epochs: Annotated[int, Opt(help="HSK-stage epochs (default: the paper's).")] = None,
    pred_epochs: Annotated[int, Opt(help="Prediction-stage epochs.")] = None,
    limit: o.Limit = None,
    dev_limit: Annotated[int, Opt(help="Dev rows per task.")] = None,
    baselines: Annotated[str, Opt(help="Comma list of ce, pred.")] = None,
    configs: Annotated[str, Opt(help="Comma list of HSK configs (full, 1l_10t_0.1h).")] = None,
    joint: Annotated[str, Opt(help="Comma list of joint-compression HSK configs.")] = None,
    depth_layers: Annotated[str, Opt(help="Depth axis: layers kept, comma list.")] = None,
    depth_l_top: Annotated[str, Opt(help="Depth axis: l_top values, comma list.")] = None,
    length_tokens: Annotated[str, Opt(help="Length axis: K values (or all), comma list.")] = None,
    length_strategies: Annotated[str, Opt(help="Length axis: strategies, comma list.")] = None,
    width_fractions: Annotated[str, Opt(help="Width axis: fractions p, comma list.")] = None,
    width_strategies: Annotated[
        str, Opt(help="Width axis: strategies, comma list (threshold: per batch, online).")
    ] = None,
    augment: Annotated[
        int, Opt(help="Extra rows: N augmented variants of every training row (build --augment).")
    ] = None,
    labelled: Annotated[
        int, Opt(help="Extra rows: only the first N training rows keep labels, the rest do not.")
    ] = None,
    extra_rows: Annotated[
        str, Opt(help="Comma list: arms with (true) and/or without (false) the extra rows.")
    ] = None,
    device: Annotated[
        str, Opt(help="cpu, cuda or cuda:N: every fine-tune, build and fit (over fit.device).")
    ] = None,
    shard: Annotated[
        str,
        Opt(
            help="I/N: run only every N-th run of the grid from the I-th (0-based), so N sweeps "
            "(one per GPU, say) share one study: its tables and caches, under file locks."
        ),
    ] = None,
    dry_run: Annotated[
        bool, Opt(help="Print the grid, what is done and an estimated time; train nothing.")
    ] = False,
    prepare: Annotated[
        bool,
        Opt(
            help="Fine-tune the teachers and make every cache the pending runs read, then stop: "
            "train nothing (the teacher's side, e.g. on the machine that has it)."
        ),
    ] = False,
    measure: Annotated[
        bool, Opt(help="--dry-run: time a few student steps here when the table has none.")
    ] = True,
    quiet: o.Quiet = False,
):
    """Run a study grid; results accumulate in STUDY/results.csv, finished runs are skipped."""
    flags = given(ctx, *_NOT_GRID)

    def body():
        from hskcache.errors import ConfigError
        from hsktrain.study.grid import load_grid, parse_flags, parse_shard

        if dry_run and prepare:
            raise ConfigError("--dry-run and --prepare: give one (--dry-run does no work)")
        quiet_transformers()
        part = parse_shard(shard) if shard else (0, 1)
        fit = {"device": device} if device else None
        grid = load_grid(str(config) if config else None, parse_flags(flags), fit)
        if dry_run:
            from hsktrain.study.estimate import dry_run as plan

            plan(grid, measure, say)
            return
        from hsktrain.outputs import output_folder
        from hsktrain.study.sweep import run_sweep

        output_folder(grid.study, "--study")
        output_folder(grid.work, "workdir")
        done = run_sweep(grid, show_progress=not quiet, say=say, shard=part, prepare=prepare)
        if prepare:
            return
        say(
            f"done: {len(done.pending)} run(s) added to {grid.study}/results.csv; "
            f"`hsktrain report {grid.study}` writes the report"
        )

    run_guarded(body)


@app.command()
def report(
    study: Annotated[str, typer.Argument(help="Study folder holding results.csv.")],
):
    """Write STUDY/README.md (mean +- std over seeds, the claims it checks) and its plots."""
    from hsktrain.study.report import write_report

    path = run_guarded(write_report, study)
    console.print(f"wrote {path}", highlight=False)


@app.command()
def compare(
    studies: Annotated[list[str], typer.Argument(help="Two or more study folders.")],
    out: Annotated[str, Opt(help="Write the Markdown here (default: print it).")] = None,
):
    """Compare studies that train the same arms with other fit recipes: per task and metric,
    one row per study (labelled by the options that differ from the first), one column per arm,
    mean +- std over seeds."""

    def body() -> str:
        from hsktrain.outputs import output_file
        from hsktrain.study.compare import compare as compare_studies

        path = out and output_file(out, "--out")
        md = compare_studies(studies)
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(md)
        return md

    md = run_guarded(body)
    if out:
        console.print(f"wrote {out}", highlight=False)
    else:
        print(md, end="")
