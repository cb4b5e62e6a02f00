"""`hsktrain`: fine-tune teachers, train students from caches, evaluate. Thin: parse and call."""

from __future__ import annotations

import json
import sys
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
    out: Annotated[str, Opt(help="Run folder; the best dev checkpoint lands in OUT/best.")],
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
    quiet: Annotated[bool, Opt(help="No progress bar.")] = False,
):
    """Fine-tune a teacher on a task with cross-entropy; keep the best dev checkpoint."""
    from hsktrain.config import FitConfig
    from hsktrain.train import fit

    def body():
        quiet_transformers()
        from hskcache.teacher import default_teacher_path

        cfg = FitConfig(
            out=out,
            data=data,
            task=task,
            dev_data=dev_data or data,
            limit=limit,
            dev_limit=dev_limit,
            max_length=max_length,
            mode="ce",
            init="pretrained",
            init_from=model or str(default_teacher_path()),
            pred_epochs=epochs,
            pred_lr=lr,
            batch_size=batch_size,
            warmup=warmup,
            seed=seed,
            device=device,
        )
        best = fit(cfg, show_progress=not quiet)
        console.print(
            _metrics_table(f"best dev checkpoint: {Path(out) / 'best'}", {"teacher": best})
        )

    run_guarded(body)


@app.command("fit")
def fit_cmd(
    out: Annotated[str, Opt(help="Run folder: best/, last/, metrics.jsonl, config.json.")],
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
    batch_size: Annotated[int, Opt(help="Batch size.")] = None,
    temperature: Annotated[float, Opt(help="Soft CE temperature.")] = None,
    hard_weight: Annotated[float, Opt(help="Weight of hard-label CE in stage 2.")] = None,
    kept_only: Annotated[
        bool, Opt(help="HSK loss on kept dims only (default: unkept dims are 0-targets).")
    ] = None,
    warmup: Annotated[float, Opt(help="Warmup fraction per stage.")] = None,
    seed: Annotated[int, Opt(help="Seed.")] = None,
    device: Annotated[str, Opt(help="cpu or cuda.")] = None,
    max_steps: Annotated[int, Opt(help="Stop and save after N steps.")] = None,
    save_every: Annotated[int, Opt(help="Save last/ every N steps too.")] = None,
    resume: Annotated[bool, Opt(help="Continue from OUT/last exactly.")] = None,
    verify: Annotated[bool, Opt(help="Verify every cache checksum first.")] = None,
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
        best = fit(cfg, show_progress=not quiet)
        if best:
            console.print(
                _metrics_table(f"best dev checkpoint: {Path(cfg.out) / 'best'}", {"student": best})
            )
        else:
            console.print(f"done: {Path(cfg.out) / 'best'}")

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
    as_json: Annotated[bool, Opt("--json", help="Print JSON.")] = False,
):
    """Evaluate a checkpoint on a split: accuracy, F1, Matthews or Pearson/Spearman."""
    from hsktrain.evaluate import evaluate_checkpoint

    def body():
        quiet_transformers()
        return evaluate_checkpoint(model, data, task, split, limit, max_length, batch_size, device)

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
):
    """Measure online vs offline KD step time, reader stall, build throughput, cache size."""
    from hsktrain.bench import BenchConfig, dumps, run_bench
    from hsktrain.report import write_results

    def body():
        quiet_transformers()
        return run_bench(BenchConfig(preset, steps, warmup, hsk, device, rss, rss_rows, workdir))

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


if __name__ == "__main__":
    sys.exit(app())
