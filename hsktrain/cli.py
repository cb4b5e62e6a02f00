"""`hsktrain`: fine-tune teachers, train students from caches, evaluate. Thin: parse and call."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from hskcache.cli import main as common_options
from hskcache.cli import quiet_transformers, run_guarded

app = typer.Typer(
    help="Train BERT-style students from HSK caches with no teacher in memory.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.callback()(common_options)
console = Console()
Opt = typer.Option


def _metrics_table(title: str, rows: dict[str, dict]) -> Table:
    names = sorted({k for m in rows.values() for k in m})
    table = Table(*(["model"] + names), title=title)
    for label, m in rows.items():
        table.add_row(label, *(f"{m[k]:.4f}" if k in m else "-" for k in names))
    return table


@app.command()
def finetune(
    data: Annotated[str, Opt(help="Training data: GLUE folder, table file or hub name.")],
    out: Annotated[str, Opt(help="Run folder; the best dev checkpoint lands in OUT/best.")] = None,
    model: Annotated[
        str, Opt(help="Model folder or hub name (default: the MiniLM-L6 package).")
    ] = None,
    task: Annotated[str, Opt(help="GLUE task; inferred from a GLUE folder's name.")] = None,
    dev_data: Annotated[str, Opt(help="Where the dev split lives (default: --data).")] = None,
    limit: Annotated[int, Opt(help="Use the first N training rows.")] = None,
    dev_limit: Annotated[int, Opt(help="Use the first N dev rows.")] = None,
    max_length: Annotated[int, Opt(help="Token limit (default per task).")] = None,
    epochs: Annotated[int, Opt(help="Epochs.")] = 3,
    lr: Annotated[float, Opt(help="Peak learning rate.")] = 5e-5,
    batch_size: Annotated[int, Opt(help="Batch size.")] = 32,
    warmup: Annotated[float, Opt(help="Warmup fraction of the steps.")] = 0.1,
    seed: Annotated[int, Opt(help="Seed.")] = 0,
    device: Annotated[str, Opt(help="cpu or cuda.")] = "cpu",
    amp: Annotated[str, Opt(help="Autocast: none | bf16 | fp16 (CUDA).")] = "none",
    quiet: Annotated[bool, Opt(help="No progress bar.")] = False,
):
    """Fine-tune a teacher on a task with cross-entropy; keep the best dev checkpoint."""
    # imports inside the commands keep `--help` fast (torch and transformers load in seconds)
    from hskcache.teacher import default_teacher_path
    from hsktrain.config import finetune_config
    from hsktrain.train import fit

    def body():
        quiet_transformers()
        cfg = finetune_config(
            data,
            out,
            model or str(default_teacher_path()),
            epochs,
            lr,
            limit,
            dev_limit,
            task=task,
            dev_data=dev_data or data,
            max_length=max_length,
            batch_size=batch_size,
            warmup=warmup,
            seed=seed,
            device=device,
            amp=amp,
        )
        result = fit(cfg, show_progress=not quiet)
        if result.rank == 0:
            title = f"best dev checkpoint: {result.best}"
            console.print(_metrics_table(title, {"teacher": result.metrics}))

    run_guarded(body)


@app.command("fit")
def fit_cmd(
    out: Annotated[str, Opt(help="Run folder: best/, last/, metrics.jsonl, config.json.")] = None,
    cache: Annotated[str, Opt(help="Cache to train from (offline: no teacher).")] = None,
    online_teacher: Annotated[
        str, Opt(help="Teacher folder run live every step (the baseline); needs --data.")
    ] = None,
    data: Annotated[str, Opt(help="Training rows for --online-teacher or --mode ce.")] = None,
    task: Annotated[str, Opt(help="GLUE task of --data.")] = None,
    limit: Annotated[int, Opt(help="First N training rows of --data.")] = None,
    dev_data: Annotated[
        str,
        Opt(
            help="GLUE folder / file with the dev split: evaluated "
            "each epoch, best checkpoint kept."
        ),
    ] = None,
    dev_limit: Annotated[int, Opt(help="First N dev rows.")] = None,
    student: Annotated[str, Opt(help="Student preset: tinybert4, tinybert6, mini, tiny.")] = None,
    init: Annotated[
        str, Opt(help="select (from the teacher's weights) | random | pretrained.")
    ] = None,
    init_from: Annotated[
        str,
        Opt(
            help="Teacher to select from (default: the cache's), or "
            "the student checkpoint for --init pretrained."
        ),
    ] = None,
    proj_init: Annotated[
        str, Opt(help="Projection init: select (student dim i -> teacher dim i) | random.")
    ] = None,
    mode: Annotated[str, Opt(help="two-stage (paper) | joint | hsk | pred | ce.")] = None,
    hsk_epochs: Annotated[int, Opt(help="Stage-1 epochs (default: the paper's per task).")] = None,
    pred_epochs: Annotated[int, Opt(help="Stage-2 (or joint / ce) epochs.")] = None,
    hsk_lr: Annotated[float, Opt(help="Stage-1 learning rate.")] = None,
    pred_lr: Annotated[float, Opt(help="Stage-2 learning rate.")] = None,
    batch_size: Annotated[
        int, Opt(help="Global batch size (under torchrun: split evenly over the processes).")
    ] = None,
    temperature: Annotated[float, Opt(help="Soft CE temperature.")] = None,
    hard_weight: Annotated[float, Opt(help="Weight of hard-label CE in stage 2.")] = None,
    kept_only: Annotated[
        bool, Opt(help="HSK loss on kept dims only (default: unkept dims are 0-targets).")
    ] = None,
    warmup: Annotated[float, Opt(help="Warmup fraction per stage.")] = None,
    seed: Annotated[int, Opt(help="Seed.")] = None,
    device: Annotated[str, Opt(help="cpu or cuda (under torchrun: each rank's own GPU).")] = None,
    amp: Annotated[str, Opt(help="Autocast of the forward: none | bf16 | fp16 (CUDA).")] = None,
    max_steps: Annotated[int, Opt(help="Stop and save after N steps.")] = None,
    save_every: Annotated[int, Opt(help="Save last/ every N steps too.")] = None,
    resume: Annotated[bool, Opt(help="Continue from OUT/last exactly.")] = None,
    verify: Annotated[bool, Opt(help="Verify every cache checksum first.")] = None,
    local_cache: Annotated[
        str,
        Opt(
            help="Folder of the local shard copy a remote --cache is read through "
            "(default: $HSKCACHE_LOCAL_CACHE or ~/.cache/hskcache)."
        ),
    ] = None,
    local_cache_size: Annotated[
        str, Opt(help="Bytes the local shard copy may hold, e.g. 10GB or 10GiB (default 10GiB).")
    ] = None,
    hsk: Annotated[str, Opt(help="Online selection config (offline: the cache's).")] = None,
    batch_threshold: Annotated[
        bool, Opt(help="Online: the paper's per-batch magnitude threshold.")
    ] = None,
    split: Annotated[str, Opt(help="Training split of --data.")] = None,
    dev_split: Annotated[str, Opt(help="Split of --dev-data to evaluate.")] = None,
    max_length: Annotated[
        int,
        Opt(help="Token limit; must equal the cache's (default: the cache's, else the task's)."),
    ] = None,
    hsk_weight: Annotated[float, Opt(help="Weight of the HSK loss in --mode joint.")] = None,
    weight_decay: Annotated[float, Opt(help="AdamW weight decay.")] = None,
    max_grad_norm: Annotated[float, Opt(help="Clip gradients to this norm.")] = None,
    buffer_chunks: Annotated[int, Opt(help="Chunks shuffled together in the reader.")] = None,
    chunk_rows: Annotated[
        int, Opt(help="Rows per in-memory chunk of --data / --dev-data rows (default 256).")
    ] = None,
    length: Annotated[
        str, Opt(help="Online token selection: left | attention | attention-no-sep.")
    ] = None,
    width_strategy: Annotated[str, Opt(help="Online width: magnitude | random | uniform.")] = None,
    score_layer: Annotated[str, Opt(help="Online scoring layer: producing | uniform.")] = None,
    l_top: Annotated[int, Opt(help="Online: teacher state for the student's top layer.")] = None,
    teacher_layers: Annotated[list[int], Opt(help="Online: explicit teacher states.")] = None,
    config: Annotated[Path, Opt(help="TOML file with any of these options.")] = None,
    quiet: Annotated[bool, Opt(help="No progress bar.")] = False,
):
    """Train a student: from a cache with no teacher in memory, or online as the baseline."""
    flags = {k: v for k, v in locals().items() if k not in ("config", "quiet")}
    flags["teacher_layers"] = teacher_layers or None
    from hskcache.config import merge_file
    from hsktrain.config import FitConfig
    from hsktrain.train import fit

    def body():
        quiet_transformers()
        cfg = merge_file(FitConfig, str(config) if config else None, flags)
        result = fit(cfg, show_progress=not quiet)
        if result.rank != 0:
            return
        if result.metrics:
            title = f"best dev checkpoint: {result.best}"
            console.print(_metrics_table(title, {"student": result.metrics}))
        wrote = ", ".join(str(p) for p in (result.best, result.last) if p is not None)
        note = f" ({result.note})" if result.note else ""
        console.print(f"done: wrote {wrote}{note}", soft_wrap=True, highlight=False)

    run_guarded(body)


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Argument(help="Model folder (e.g. RUN/best).")],
    data: Annotated[str, Opt(help="GLUE folder, table file or hub name.")],
    task: Annotated[str, Opt(help="GLUE task; inferred from a GLUE folder's name.")] = None,
    split: Annotated[str, Opt(help="dev or test (test needs labels).")] = "dev",
    limit: Annotated[int, Opt(help="First N rows.")] = None,
    max_length: Annotated[
        int, Opt(help="Token limit (default: the run's, else the task's).")
    ] = None,
    batch_size: Annotated[int, Opt(help="Batch size.")] = 128,
    device: Annotated[str, Opt(help="cpu or cuda.")] = "cpu",
    text_column: Annotated[str, Opt(help="Text column of a table file.")] = None,
    text_pair_column: Annotated[str, Opt(help="Second-text column (sentence pairs).")] = None,
    label_column: Annotated[str, Opt(help="Label column of a table file.")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print JSON.")] = False,
):
    """Evaluate a checkpoint on a split: accuracy, F1, Matthews or Pearson/Spearman."""
    from hskcache.data import Columns
    from hsktrain.evaluate import evaluate_checkpoint

    def body():
        quiet_transformers()
        columns = Columns(text_column, text_pair_column, label_column)
        return evaluate_checkpoint(
            model, data, task, split, limit, max_length, batch_size, device, columns
        )

    result = run_guarded(body)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        console.print(
            _metrics_table(
                f"{result['task']} {split} ({result['examples']} rows)", {model: result["metrics"]}
            )
        )


@app.command()
def bench(
    preset: Annotated[
        str,
        Opt(
            help="bert-base-tinybert4 (seq 128, random-weight 12L-768 "
            "teacher), bert-base-tinybert4-64, minilm (real teacher, "
            "seq 64), tiny."
        ),
    ] = "bert-base-tinybert4",
    steps: Annotated[int, Opt(help="Timed steps per mode (median).")] = 20,
    warmup: Annotated[int, Opt(help="Untimed warm-up steps per mode.")] = 3,
    hsk: Annotated[str, Opt(help="Selection cached and computed online.")] = "1l_10t_0.1h",
    device: Annotated[str, Opt(help="cpu or cuda.")] = "cpu",
    rss: Annotated[
        bool, Opt(help="Also measure fit's peak RSS on a cache and one 10x larger.")
    ] = True,
    rss_rows: Annotated[int, Opt(help="Rows of the smaller RSS-probe cache.")] = 2000,
    workdir: Annotated[
        str, Opt(help="Where teachers, data and caches go (default: a temp folder).")
    ] = None,
    results: Annotated[Path, Opt(help="Write a markdown results file here.")] = None,
    plot: Annotated[Path, Opt(help="Write a PNG of step times here (with --results).")] = None,
    as_json: Annotated[bool, Opt("--json", help="Print JSON.")] = False,
    remote: Annotated[
        bool,
        Opt(
            help="Also time the reader's stall with the cache on S3 (a loopback server the "
            "bench starts), cold and warm through the local shard copy."
        ),
    ] = False,
):
    """Measure online vs offline KD step time, reader stall, build throughput, cache size."""
    from hsktrain.bench import BenchConfig, dumps, run_bench
    from hsktrain.report import write_results

    def body():
        quiet_transformers()
        work = workdir or (tempfile.mkdtemp(prefix="hskbench-") if remote else None)
        result = run_bench(BenchConfig(preset, steps, warmup, hsk, device, rss, rss_rows, work))
        if remote:
            from hsktrain.bench import PRESETS
            from hsktrain.remote_bench import remote_stall

            p = PRESETS[preset]
            common = dict(student=p.student, batch_size=p.batch, device=device)
            result.update(remote_stall(Path(work) / "cache", common, Path(work)))
            result["targets"]["remote_warm_stall_fraction"] = result.pop("remote_target")
        return result

    result = run_guarded(body)
    if results is not None:
        command = "hsktrain " + " ".join(sys.argv[1:])
        write_results(result, results, plot, command)
    if as_json:
        print(dumps(result))
        return
    table = Table(
        "target",
        "value",
        "bound",
        "met",
        title=f"bench {preset} "
        f"(step ms: bare {result['step_ms']['bare']:.1f}, offline "
        f"{result['step_ms']['offline']:.1f}, online {result['step_ms']['online']:.1f})",
    )
    for k, v in result["targets"].items():
        table.add_row(k, f"{v['value']:.3f}", v["target"], "yes" if v["met"] else "[red]no")
    console.print(table)


_NOT_GRID = ("config", "dry_run", "measure", "quiet")  # sweep's options that are not grid keys


@app.command()
def sweep(
    config: Annotated[Path, Opt(help="Study TOML file (flags override its keys).")] = None,
    study: Annotated[str, Opt(help="Study folder: results.csv, builds.csv, report.")] = None,
    tasks: Annotated[str, Opt(help="Comma list: GLUE folders, or names under --glue.")] = None,
    glue: Annotated[str, Opt(help="Where task names are looked up.")] = None,
    teacher: Annotated[str, Opt(help="Fine-tuned teacher (with --finetune: to fine-tune).")] = None,
    finetune: Annotated[
        bool, Opt("--finetune/--no-finetune", help="Fine-tune the teacher once per task.")
    ] = None,
    student: Annotated[str, Opt(help="Student preset or JSON shape.")] = None,
    seeds: Annotated[str, Opt(help="Comma list of seeds.")] = None,
    hsk_epochs: Annotated[int, Opt(help="HSK-stage epochs (default: the paper's).")] = None,
    pred_epochs: Annotated[int, Opt(help="Prediction-stage epochs.")] = None,
    limit: Annotated[int, Opt(help="Training rows per task.")] = None,
    dev_limit: Annotated[int, Opt(help="Dev rows per task.")] = None,
    baselines: Annotated[str, Opt(help="Comma list of ce, pred.")] = None,
    configs: Annotated[str, Opt(help="Comma list of HSK configs (full, 1l_10t_0.1h).")] = None,
    joint: Annotated[str, Opt(help="Comma list of joint-compression HSK configs.")] = None,
    depth_layers: Annotated[str, Opt(help="Depth axis: layers kept, comma list.")] = None,
    depth_l_top: Annotated[str, Opt(help="Depth axis: l_top values, comma list.")] = None,
    length_tokens: Annotated[str, Opt(help="Length axis: K values (or all), comma list.")] = None,
    length_strategies: Annotated[str, Opt(help="Length axis: strategies, comma list.")] = None,
    width_fractions: Annotated[str, Opt(help="Width axis: fractions p, comma list.")] = None,
    width_strategies: Annotated[str, Opt(help="Width axis: strategies, comma list.")] = None,
    dry_run: Annotated[
        bool, Opt(help="Print the grid, what is done and an estimated time; train nothing.")
    ] = False,
    measure: Annotated[
        bool, Opt(help="--dry-run: time a few student steps here when the table has none.")
    ] = True,
    quiet: Annotated[bool, Opt(help="No progress bars.")] = False,
):
    """Run a study grid; results accumulate in STUDY/results.csv, finished runs are skipped."""
    flags = {k: v for k, v in locals().items() if k not in _NOT_GRID}
    from hsktrain.grid import load_grid, parse_flags

    def body():
        quiet_transformers()
        grid = load_grid(str(config) if config else None, parse_flags(flags))
        say = lambda line: console.print(line, soft_wrap=True, highlight=False, markup=False)  # noqa: E731
        if dry_run:
            from hsktrain.estimate import dry_run as plan

            plan(grid, measure, say)
            return
        from hsktrain.sweep import run_sweep

        done = run_sweep(grid, show_progress=not quiet, say=say)
        say(f"done: {len(done.pending)} run(s) added to {grid.study}/results.csv; "
            f"`hsktrain report {grid.study}` writes the report")  # fmt: skip

    run_guarded(body)


@app.command()
def report(
    study: Annotated[str, typer.Argument(help="Study folder holding results.csv.")],
):
    """Write STUDY/README.md (mean +- std over seeds, the paper's claims) and its plots."""
    from hsktrain.study import write_report

    path = run_guarded(write_report, study)
    console.print(f"wrote {path}", highlight=False)


if __name__ == "__main__":
    sys.exit(app())
