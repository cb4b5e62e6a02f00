"""`hsktrain bench step|build|e2e|reader|inference`: one sub-command per bench, each with only
its own options. Thin: each hands the options it was given to `hsktrain.bench.run`, which makes
the bench's config and runs it, then `hsktrain.bench.writer` writes and shows the result.

Options default to None and only those typed reach the config (`given`), so each setting has one
default, the dataclass's, which --help shows (`shows_defaults`). The work is imported inside each
command so that `--help` does not load torch. `bench` took its mode from flags (--build, --e2e)
before it had sub-commands; such a spelling gets one line naming the new one.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperCommand, TyperGroup

from hskcache import options as o
from hskcache.cliutil import (
    config_defaults,
    console,
    given,
    quiet_transformers,
    run_guarded,
    shows_defaults,
)
from hskcache.errors import ConfigError

Opt = typer.Option
SUBCOMMANDS = ("step", "build", "e2e", "reader", "inference")
Results = Annotated[Path, Opt(help="Write a markdown results file here.")]
Plot = Annotated[Path, Opt(help="Write a PNG here (with --results).")]
Workdir = Annotated[str, Opt(help="Where teachers, data and caches go.")]
Teacher = Annotated[str, Opt(help="Teacher folder or hub name.")]
_OUTPUTS = ("results", "plot", "as_json")  # options that are not config fields


def old_spelling(args: list[str]) -> None:
    """Refuse `hsktrain bench [--build | --e2e] ...`, naming the sub-command it is now.

    Raises:
        ConfigError: always; one line with the new spelling of the same command.
    """
    mode = next((m for m in ("build", "e2e") if f"--{m}" in args), "step")
    rest = [a for a in args if a != f"--{mode}"]
    new = shlex.join(["hsktrain", "bench", mode, *rest])
    raise ConfigError(
        f"`hsktrain bench` takes the bench as a sub-command ({', '.join(SUBCOMMANDS)}): use `{new}`"
    )


class _BenchGroup(TyperGroup):
    """`hsktrain bench`: an option (or nothing) where the sub-command goes is an old spelling."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if not args or (args[0].startswith("-") and args[0] not in ctx.help_option_names):
            run_guarded(old_spelling, args)
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_BenchGroup,
    help="Measure the offline speedup: KD steps (step), the build (build), whole runs (e2e), "
    "the cache reader (reader); and what a student is for: its answers' speed (inference).",
    pretty_exceptions_enable=False,
)


def _bench(
    ctx: typer.Context, name: str, results: Path | None, plot: Path | None, as_json: bool
) -> None:
    """Every bench's course: refuse an output it cannot write, run it with the options typed,
    write the results file, print the JSON or the targets table."""
    from hsktrain.bench.run import run_bench
    from hsktrain.bench.writer import Outputs, check_outputs, finish

    fields = given(ctx, *_OUTPUTS)
    out = Outputs(results, plot, as_json)
    run_guarded(check_outputs, out, fields.get("workdir"))
    quiet_transformers()
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    result, report = run_guarded(run_bench, name, fields, log)
    shown = run_guarded(finish, result, report, out, "hsktrain " + " ".join(sys.argv[1:]))
    if isinstance(shown, str):
        print(shown)
    else:
        console.print(shown)


def _defaults(name: str, **described: str) -> type[TyperCommand]:
    """A command class whose --help shows the bench config's defaults; `described` says what a
    None default means."""

    def shown() -> dict:
        from hsktrain.bench.run import CONFIGS

        return config_defaults(CONFIGS[name], workdir="a temp folder", **described)

    return shows_defaults(shown)


@app.command(cls=_defaults("step"))
def step(
    ctx: typer.Context,
    preset: Annotated[
        str,
        Opt(
            help="bert-base-tinybert4 (seq 128, random-weight 12L-768 "
            "teacher), mpnet-tinybert4 (the real 12L-768 MPNet of `make mpnet`, seq 128), "
            "bert-base-tinybert4-64, minilm (real teacher, seq 64), tiny."
        ),
    ] = None,
    steps: Annotated[int, Opt(help="Timed steps per kind of step (median).")] = None,
    warmup: Annotated[int, Opt(help="Untimed warm-up steps per kind of step.")] = None,
    hsk: o.Hsk = None,
    batch: Annotated[int, Opt(help="Rows a step, instead of the preset's.")] = None,
    device: o.Device = None,
    amp: o.Amp = None,
    rss: Annotated[
        bool, Opt(help="Also measure fit's peak RSS on a cache and one 10x larger.")
    ] = None,
    rss_rows: Annotated[int, Opt(help="Rows of the smaller RSS-probe cache.")] = None,
    remote: Annotated[
        bool,
        Opt(
            help="Also time the reader's stall with the cache on S3 (a loopback server the "
            "bench starts), cold and warm through the local shard copy."
        ),
    ] = None,
    workdir: Workdir = None,
    results: Results = None,
    plot: Plot = None,
    as_json: o.AsJson = False,
):
    """Online vs offline KD step time, reader stall, build rows/s, cache size, fit's memory.

    On synthetic rows at one preset's shapes; --remote adds the stall from object storage.
    """

    _bench(ctx, "step", results, plot, as_json)


@app.command(
    cls=_defaults(
        "build",
        data="MRPC and SST-2 under $GLUE or ../shared/data/glue",
        task="from --data's folder name",
        teacher="MiniLM-L6",
    )
)
def build(
    ctx: typer.Context,
    data: o.Data = None,
    task: o.Task = None,
    teacher: Teacher = None,
    limit: o.Limit = None,
    hsk: o.Hsk = None,
    device: o.Device = None,
    amp: o.Amp = None,
    workdir: Workdir = None,
    results: Results = None,
    as_json: o.AsJson = False,
):
    """hskcache build's rows/s on real rows against a bare teacher forward.

    Per task: the forward in data order (a) and over length-sorted batches (b), the build (c)
    and a data-order build (d), and how far (c)'s stored values are from (d)'s.
    """

    _bench(ctx, "build", results, None, as_json)


@app.command(
    cls=_defaults(
        "e2e",
        data="MRPC under $GLUE or ../shared/data/glue, else the hub",
        task="from --data's folder name, else mrpc",
        teacher="MiniLM-L6",
        limit="all",
        dev_limit="all",
    )
)
def e2e(
    ctx: typer.Context,
    data: o.Data = None,
    task: o.Task = None,
    teacher: Teacher = None,
    finetune: Annotated[
        bool,
        Opt("--finetune/--no-finetune", help="Fine-tune --teacher on the task first, untimed."),
    ] = None,
    finetune_epochs: Annotated[int, Opt(help="Teacher fine-tune epochs.")] = None,
    hsk_epochs: Annotated[int, Opt(help="HSK-stage epochs of both fits.")] = None,
    pred_epochs: Annotated[int, Opt(help="Prediction epochs of both fits.")] = None,
    limit: o.Limit = None,
    dev_limit: Annotated[int, Opt(help="First N dev rows.")] = None,
    student: Annotated[str, Opt(help="Student preset.")] = None,
    seed: o.Seed = None,
    hsk: o.Hsk = None,
    device: o.Device = None,
    amp: o.Amp = None,
    workdir: Workdir = None,
    results: Results = None,
    plot: Plot = None,
    as_json: o.AsJson = False,
):
    """Whole runs on real data: a complete online fit vs hskcache build + offline fit.

    Both students' dev scores and the amortised speedup for N students from one cache.
    """

    _bench(ctx, "e2e", results, plot, as_json)


@app.command(
    cls=_defaults(
        "reader",
        cache="three built here",
        teacher="a random-weight 6L-384 teacher (MiniLM-L6's shape)",
    )
)
def reader(
    ctx: typer.Context,
    cache: Annotated[
        str,
        Opt(
            help="Time this cache (path or URL; a remote one through the local shard copy, "
            "cold then warm) instead of building 1l_10t_0.1h, 3l_20t_0.5h and full."
        ),
    ] = None,
    teacher: Teacher = None,
    rows: Annotated[int, Opt(help="Rows of each cache built.")] = None,
    seq: Annotated[int, Opt(help="Tokens per synthetic row.")] = None,
    seconds: Annotated[
        float, Opt(help="Each reader figure reads at least this long (and one epoch).")
    ] = None,
    steps: Annotated[int, Opt(help="Timed bare student steps per batch size (median).")] = None,
    student: Annotated[str, Opt(help="The bare step's student preset.")] = None,
    remote: Annotated[
        bool,
        Opt(
            help="Also read the built caches from S3 (a loopback server the bench starts), "
            "cold and warm through the local shard copy."
        ),
    ] = None,
    device: o.Device = None,
    amp: o.Amp = None,
    workdir: Workdir = None,
    results: Results = None,
    as_json: o.AsJson = False,
):
    """Rows/s of the cache reader alone (read, decode, pin) on one core, beside the bare
    student step's, at batch 32 and 256; the disk's read bandwidth in the same run.
    """

    _bench(ctx, "reader", results, None, as_json)


def _batch_sizes(value: str | None) -> tuple | None:
    """`--batch-sizes 1,32` as (1, 32); a part that is no integer stays as written, for the
    config's one-line refusal."""
    if value is None:
        return None
    return tuple(int(v) if v.strip().lstrip("-").isdigit() else v for v in value.split(","))


@app.command(cls=_defaults("inference", task="the teacher's run's", max_length="the models'"))
def inference(
    ctx: typer.Context,
    teacher: Annotated[str, Opt(help="The teacher's model folder (RUN/best).")],
    student: Annotated[str, Opt(help="The student's model folder (RUN/best).")],
    data: o.Data,
    task: o.Task = None,
    split: o.Split = None,
    limit: o.Limit = None,
    batch_sizes: Annotated[
        str, Opt(help="Batch sizes, comma-separated.", callback=_batch_sizes)
    ] = None,
    rounds: Annotated[int, Opt(help="Rounds; each times every side at every batch size.")] = None,
    warmup: Annotated[int, Opt(help="Untimed batches before each timed pass.")] = None,
    device: o.Device = None,
    onnx: Annotated[bool, Opt(help="Also time both models exported to ONNX.")] = None,
    onnx_dir: Annotated[str, Opt(help="Keep teacher.onnx / student.onnx here.")] = None,
    max_length: o.MaxLength = None,
    tolerance: Annotated[float, Opt(help="Largest |ONNX - PyTorch| logit accepted.")] = None,
    results: Results = None,
    as_json: o.AsJson = False,
):
    """Rows/s and p50 / p95 latency of a student vs its teacher on real rows, at batch 1 and
    32, in PyTorch and ONNX: how much faster the student answers."""
    _bench(ctx, "inference", results, None, as_json)
