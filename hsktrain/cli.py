"""`hsktrain`: fine-tune teachers, train students from caches, evaluate, export, predict. Thin:
parse and call. The recipes' commands live beside them: `sweep`, `report` and `compare` in
study/cli.py, `bench` in bench/cli.py.

Shared options are declared in `hskcache.options` (the same flag means the same thing in both
CLIs); the work is imported inside each command so that `--help` does not load torch.
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
    given,
    main,
    metrics_table,
    quiet_transformers,
    run_guarded,
    say,
    shows_defaults,
)
from hsktrain.bench.cli import app as bench_app
from hsktrain.study.cli import app as study_app

app = typer.Typer(
    help="Train BERT-style students from HSK caches with no teacher in memory.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.callback()(main)
Opt = typer.Option
EVAL_SPLIT = "dev"
L_TOP = "2/3 of the teacher's depth"
ONE_ANSWER = "one class for every row"


def _scores(title: str, model: str, metrics: dict, one_answer: dict, warning: str) -> None:
    """A model's dev scores beside the floor of answering one class for every row, and the
    warning when it did not clear that floor: a student too far from its teacher (a narrow one
    from a wide teacher) often learns only the label prior, and its scores alone do not show it."""
    rows = {model: metrics} | ({ONE_ANSWER: one_answer} if one_answer else {})
    console.print(metrics_table(title, rows))
    if warning:
        say(f"warning: {warning} (docs/hsktrain.md#a-model-that-learned-nothing)")


def _finetune_defaults() -> dict:
    from hsktrain.config import FINETUNE_EPOCHS, FINETUNE_LR

    return {"epochs": FINETUNE_EPOCHS, "lr": FINETUNE_LR}


@app.command(cls=shows_defaults(_finetune_defaults))
def finetune(
    data: o.Data,
    out: Annotated[str, Opt(help="Run folder; the best dev checkpoint lands in OUT/best.")] = None,
    model: Annotated[
        str, Opt(help="Model folder or hub name (default: the MiniLM-L6 package).")
    ] = None,
    task: o.Task = None,
    dev_data: Annotated[str, Opt(help="Where the dev split lives (default: --data).")] = None,
    limit: o.Limit = None,
    dev_limit: Annotated[int, Opt(help="Use the first N dev rows.")] = None,
    max_length: o.MaxLength = None,
    epochs: Annotated[int, Opt(help="Epochs.")] = None,
    lr: Annotated[float, Opt(help="Peak learning rate.")] = None,
    batch_size: Annotated[int, Opt(help="Batch size.")] = 32,
    warmup: Annotated[float, Opt(help="Warmup fraction of the steps.")] = 0.1,
    seed: o.Seed = 0,
    device: o.Device = "cpu",
    amp: o.Amp = "none",
    quiet: o.Quiet = False,
):
    """Fine-tune a teacher on a task with cross-entropy; keep the best dev checkpoint."""

    def body():
        from hskcache.teacher import default_teacher_path
        from hsktrain.config import finetune_config
        from hsktrain.train import fit

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
            _scores(title, "teacher", result.metrics, result.one_answer, result.warning)

    run_guarded(body)


def _fit_defaults() -> dict:
    from hsktrain.config import DEFAULTS, FitConfig

    return config_defaults(
        FitConfig,
        **DEFAULTS,
        hsk_epochs="the paper's per task",
        init_from="the cache's teacher",
        l_top=L_TOP,
        max_length="the cache's, else the task's",
        local_cache="$HSKCACHE_LOCAL_CACHE or ~/.cache/hskcache",
        local_cache_size="10GiB",
    )


@app.command("fit", cls=shows_defaults(_fit_defaults))
def fit_cmd(
    ctx: typer.Context,
    out: Annotated[str, Opt(help="Run folder: best/, last/, metrics.jsonl, config.json.")] = None,
    cache: Annotated[str, Opt(help="Cache to train from (offline: no teacher).")] = None,
    online_teacher: Annotated[
        str, Opt(help="Teacher folder run live every step (the baseline); needs --data.")
    ] = None,
    data: o.Data = None,
    task: o.Task = None,
    split: o.Split = None,
    limit: o.Limit = None,
    dev_data: Annotated[
        str,
        Opt(help="GLUE folder / file with the dev split: evaluated each epoch, best kept."),
    ] = None,
    dev_split: Annotated[str, Opt(help="Split of --dev-data to evaluate.")] = None,
    dev_limit: Annotated[int, Opt(help="First N dev rows.")] = None,
    text_column: o.TextColumn = None,
    text_pair_column: o.TextPairColumn = None,
    label_column: o.LabelColumn = None,
    max_length: o.MaxLength = None,
    student: Annotated[
        str,
        Opt(
            help="Student: full4 / full6 (4 or 6 of the teacher's layers at its full width), a "
            "preset of its own width (tinybert4: the paper's 4L-312, tinybert6, mini, tiny) or a "
            "JSON file of config fields."
        ),
    ] = None,
    init: Annotated[
        str, Opt(help="select (from the teacher's weights) | random | pretrained.")
    ] = None,
    init_from: Annotated[
        str,
        Opt(help="Teacher to select from, or the student checkpoint for --init pretrained."),
    ] = None,
    proj_init: Annotated[
        str,
        Opt(
            help="Projection init: select (student dim i -> the teacher dim it was selected "
            "from) | random | fitted (least squares on the first 256 rows' targets: the map "
            "that scores the lowest HSK loss for the student as it starts)."
        ),
    ] = None,
    layer_choice: Annotated[
        str,
        Opt(
            help="Which teacher layers --init select copies: even | bottom (PKD) | mapped (the "
            "layer each HSK target sits after). Default: as the cache's stored init, or bottom for "
            "full4 / full6 and even for the others."
        ),
    ] = None,
    select: Annotated[
        str,
        Opt(
            help="Which dims --init select keeps: prefix (the first) | importance (the most "
            "active on the first 256 training rows). Default: as the cache's stored init, or "
            "prefix from --init-from."
        ),
    ] = None,
    mode: Annotated[str, Opt(help="two-stage (paper) | joint | hsk | pred | ce.")] = None,
    hsk_epochs: Annotated[int, Opt(help="Stage-1 epochs.")] = None,
    pred_epochs: Annotated[int, Opt(help="Stage-2 (or joint / ce) epochs.")] = None,
    hsk_lr: Annotated[float, Opt(help="Stage-1 learning rate.")] = None,
    pred_lr: Annotated[float, Opt(help="Stage-2 learning rate.")] = None,
    batch_size: Annotated[
        int, Opt(help="Global batch size (under torchrun: split evenly over the processes).")
    ] = None,
    temperature: Annotated[float, Opt(help="Soft CE temperature.")] = None,
    hard_weight: Annotated[float, Opt(help="Weight of hard-label CE in stage 2.")] = None,
    hsk_weight: Annotated[float, Opt(help="Weight of the HSK loss in --mode joint.")] = None,
    kept_only: Annotated[
        bool, Opt(help="HSK loss on kept dims only (otherwise unkept dims are 0-targets).")
    ] = None,
    warmup: Annotated[float, Opt(help="Warmup fraction per stage.")] = None,
    lr_decay: Annotated[
        str, Opt(help="After warmup: none (constant lr, the paper's) or linear (to 0 per stage).")
    ] = None,
    weight_decay: Annotated[float, Opt(help="AdamW weight decay.")] = None,
    max_grad_norm: Annotated[float, Opt(help="Clip gradients to this norm.")] = None,
    seed: o.Seed = None,
    device: o.Device = None,
    amp: o.Amp = None,
    max_steps: Annotated[int, Opt(help="Stop and save after N steps.")] = None,
    save_every: Annotated[int, Opt(help="Save last/ every N steps too.")] = None,
    resume: Annotated[bool, Opt(help="Continue from OUT/last exactly.")] = None,
    verify: Annotated[bool, Opt(help="Verify every cache checksum first.")] = None,
    local_cache: Annotated[
        str, Opt(help="Folder of the local shard copy a remote --cache is read through.")
    ] = None,
    local_cache_size: Annotated[
        str, Opt(help="Bytes the local shard copy may hold, e.g. 10GB or 10GiB.")
    ] = None,
    buffer_chunks: Annotated[int, Opt(help="Chunks shuffled together in the reader.")] = None,
    group_by_length: Annotated[
        bool,
        Opt(
            help="Batch rows of similar length together inside each reader buffer, so dynamic "
            "padding trims more. Use it when row lengths vary and step time matters (a batch "
            "costs its longest row); batches are less random, so check the dev score. Same "
            "seed, same batches; resumable."
        ),
    ] = None,
    chunk_rows: Annotated[
        int, Opt(help="Rows per in-memory chunk of --data / --dev-data rows.")
    ] = None,
    hsk: o.Hsk = None,
    length: o.Length = None,
    width_strategy: o.WidthStrategy = None,
    score_layer: o.ScoreLayer = None,
    l_top: o.LTop = None,
    teacher_layers: o.TeacherLayers = None,
    batch_threshold: Annotated[
        bool, Opt(help="Online: the paper's per-batch magnitude threshold.")
    ] = None,
    config: o.Config = None,
    quiet: o.Quiet = False,
):
    """Train a student: from a cache with no teacher in memory, or online as the baseline.

    --data rows train an online (--online-teacher) or --mode ce run; the selection options
    (--hsk ... --teacher-layers) apply online only, a cache's selection is fixed.
    """
    flags = given(ctx, "config", "quiet")

    def body():
        from hskcache.config import merge_file
        from hsktrain.config import FitConfig
        from hsktrain.train import fit

        quiet_transformers()
        cfg = merge_file(FitConfig, str(config) if config else None, flags)
        result = fit(cfg, show_progress=not quiet)
        if result.rank != 0:
            return
        if result.metrics:
            title = f"best dev checkpoint: {result.best}"
            _scores(title, "student", result.metrics, result.one_answer, result.warning)
        wrote = ", ".join(str(p) for p in (result.best, result.last) if p is not None)
        say(f"student: {result.student}")
        say(f"done: wrote {wrote}" + (f" ({result.note})" if result.note else ""))

    run_guarded(body)


@app.command(
    "eval",
    cls=shows_defaults(lambda: {"split": EVAL_SPLIT, "max_length": "the run's, else the task's"}),
)
def eval_cmd(
    model: Annotated[str, typer.Argument(help="Model folder (e.g. RUN/best).")],
    data: o.Data,
    task: o.Task = None,
    split: o.Split = None,
    limit: o.Limit = None,
    max_length: o.MaxLength = None,
    batch_size: Annotated[int, Opt(help="Batch size.")] = 128,
    device: o.Device = "cpu",
    text_column: o.TextColumn = None,
    text_pair_column: o.TextPairColumn = None,
    label_column: o.LabelColumn = None,
    as_json: o.AsJson = False,
):
    """Evaluate a checkpoint on a split: accuracy, F1, Matthews or Pearson/Spearman."""

    def body():
        from hskcache.data import Columns
        from hskcache.errors import ConfigError
        from hsktrain.evaluate import evaluate_checkpoint

        if split is not None and Path(data).is_file():
            raise ConfigError(
                f"--split {split}: {data} is a table file, one split already; drop --split"
            )
        quiet_transformers()
        columns = Columns(text_column, text_pair_column, label_column)
        return evaluate_checkpoint(
            model, data, task, split or EVAL_SPLIT, limit, max_length, batch_size, device, columns
        )

    result = run_guarded(body)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        title = f"{result['task']} {result['split']} ({result['examples']} rows)"
        _scores(title, model, result["metrics"], result["one_answer"], result["warning"])


@app.command()
def export(
    model: Annotated[str, typer.Argument(help="Model folder (e.g. RUN/best).")],
    onnx: Annotated[str, Opt(help="ONNX file to write (dynamic batch and sequence axes).")],
    tolerance: Annotated[
        float, Opt(help="Largest |ONNX - PyTorch| logit accepted on the check batches.")
    ] = 1e-4,
    overwrite: Annotated[bool, Opt(help="Replace an existing --onnx file.")] = False,
):
    """Export a model to ONNX and check its logits against PyTorch's with onnxruntime."""

    def body():
        from hsktrain.export import export_onnx

        quiet_transformers()
        return export_onnx(model, onnx, tolerance, overwrite)

    r = run_guarded(body)
    say(
        f"wrote {r.path} (inputs {', '.join(r.inputs)}); max |ONNX - PyTorch| logit on "
        f"{r.rows} rows in {r.batches} batches: {r.max_abs_diff:.2g} (tolerance {r.tolerance:g})"
    )


@app.command(cls=shows_defaults(lambda: {"max_length": "the run's, else 128"}))
def predict(
    model: Annotated[str, typer.Argument(help="Model folder (e.g. RUN/best).")],
    data: o.Data,
    out: Annotated[str, Opt(help="OUT.jsonl or OUT.csv: one record a row.")],
    task: o.Task = None,
    split: o.Split = "dev",
    limit: o.Limit = None,
    max_length: o.MaxLength = None,
    batch_size: Annotated[int, Opt(help="Batch size.")] = 64,
    device: o.Device = "cpu",
    text_column: o.TextColumn = None,
    text_pair_column: o.TextPairColumn = None,
    label_column: o.LabelColumn = None,
    overwrite: Annotated[bool, Opt(help="Replace an existing --out file.")] = False,
    quiet: o.Quiet = False,
):
    """Score a table or text file: class name, id and probabilities (or score) per row."""

    def body():
        from hskcache.data import Columns
        from hsktrain.predict import predict_file

        quiet_transformers()
        columns = Columns(text_column, text_pair_column, label_column)
        return predict_file(
            model,
            data,
            out,
            task,
            split,
            columns,
            limit,
            batch_size,
            max_length,
            device,
            overwrite,
            show_progress=not quiet,
        )

    r = run_guarded(body)
    say(f"wrote {r.out}: {r.rows} rows from {r.source}")


app.add_typer(study_app)  # sweep, report, compare: top-level commands
app.add_typer(bench_app, name="bench")


if __name__ == "__main__":
    sys.exit(app())
