"""`make demo`: the whole pipeline on the default teacher and GLUE SST-2, in a few minutes.

Fine-tunes the MiniLM-L6 teacher on the first ROWS training rows, builds a `1l_10t_0.1h` cache
from it, trains `fit`'s default student (the teacher's bottom 4 layers) twice (CE on labels
only, 6 epochs, and distilled from the cache with the paper's two stages, 3 + 3), evaluates all
three on the dev split, and times online vs offline KD steps. Data: $GLUE/SST-2 when that folder
exists, else the Hugging Face hub's GLUE when reachable, else a clear message.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hskcache.build import build_cache
from hskcache.cliutil import quiet_transformers
from hskcache.config import BuildConfig
from hskcache.errors import ConfigError
from hskcache.reader import open_cache
from hskcache.shapes import DEFAULT_STUDENT
from hskcache.teacher import default_teacher_path
from hsktrain.config import FINETUNE_LR, FitConfig, finetune_config
from hsktrain.evaluate import evaluate_checkpoint
from hsktrain.glue import find_task_data
from hsktrain.train import fit, read_metrics

ROWS = int(os.environ.get("DEMO_ROWS", 4000))
OUT = Path(os.environ.get("DEMO_OUT", "runs/demo"))
console = Console()


def find_data() -> str:
    """A GLUE SST-2 folder here, else the hub's GLUE (when reachable)."""
    try:
        return find_task_data("sst2", "allow access to the Hugging Face hub")[0]
    except ConfigError as e:
        console.print(f"[red]error:[/red] {e}")
        sys.exit(1)


def timed(label: str, fn, *args) -> float:
    """Seconds `fn(*args)` takes, under a heading."""
    console.rule(f"[bold]{label}")
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def step_seconds(out: Path) -> float:
    """Median seconds per step of a short run, from its step timestamps in metrics.jsonl."""
    stamps = [r["t"] for r in read_metrics(out) if "t" in r]
    gaps = sorted(b - a for a, b in zip(stamps[5:], stamps[6:], strict=False))  # skip warm-up
    return gaps[len(gaps) // 2]


def train_all(data: str, task: str | None) -> dict[str, float]:
    """Steps 1-4: the teacher, its cache and both students; seconds of each."""
    teacher = str(OUT / "teacher" / "best")
    cache = OUT / "cache-1l_10t_0.1h"
    teacher_cfg = finetune_config(
        data,
        str(OUT / "teacher"),
        str(default_teacher_path()),
        2,
        FINETUNE_LR,
        ROWS,
        None,
        task=task,
        dev_data=data,
        warmup=0.1,
    )
    build_cfg = BuildConfig(
        data=data,
        task=task,
        out=str(cache),
        teacher=teacher,
        limit=ROWS,
        hsk="1l_10t_0.1h",
        overwrite=True,
    )
    student = dict(init="select", init_from=teacher, dev_data=data)  # fit's default student
    ce_cfg = FitConfig(
        out=str(OUT / "student-ce"),
        data=data,
        task=task,
        limit=ROWS,
        mode="ce",
        pred_epochs=6,  # as many passes as the KD student (3 + 3)
        pred_lr=1e-4,
        **student,
    )
    kd_cfg = FitConfig(
        out=str(OUT / "student-kd"), cache=str(cache), hsk_epochs=3, pred_epochs=3, **student
    )
    return {
        "teacher": timed("1/5 fine-tune the MiniLM-L6 teacher (CE, 2 epochs)", fit, teacher_cfg),
        "build": timed(
            "2/5 build the 1l_10t_0.1h cache (teacher runs once)", build_cache, build_cfg
        ),
        "ce": timed("3/5 CE-only student (selected from the teacher, labels only)", fit, ce_cfg),
        "kd": timed("4/5 distilled student from the cache (no teacher in memory)", fit, kd_cfg),
    }


def speed_probe(data: str, task: str | None) -> dict[str, float]:
    """Step 5: median seconds per HSK step, teacher live (online) vs from the cache (offline)."""
    console.rule("[bold]5/5 speed: online KD (teacher live) vs offline KD (cache), 30 steps")
    teacher = str(OUT / "teacher" / "best")
    probes = {}
    for name, extra in (
        ("online", {"online_teacher": teacher, "data": data, "task": task, "limit": ROWS}),
        ("offline", {"cache": str(OUT / "cache-1l_10t_0.1h")}),
    ):
        out = OUT / f"speed-{name}"
        cfg = FitConfig(out=str(out), max_steps=30, mode="hsk", init_from=teacher, **extra)
        fit(cfg, show_progress=False)
        probes[name] = step_seconds(out)
    return probes


def summary(data: str, task: str | None, seconds: dict[str, float], probes: dict) -> None:
    """Dev scores of the three models, the cache's size and the step speedup."""
    scores = {
        name: evaluate_checkpoint(path, data, task, "dev", None, None, 128, "cpu")
        for name, path in (
            ("teacher (MiniLM-L6, fine-tuned)", OUT / "teacher/best"),
            (f"student CE only ({DEFAULT_STUDENT})", OUT / "student-ce/best"),
            ("student 1l_10t_0.1h KD, offline", OUT / "student-kd/best"),
        )
    }
    times = [seconds["teacher"], seconds["ce"], seconds["kd"]]
    table = Table(
        "model",
        "dev accuracy",
        "train time",
        title=f"SST-2 dev ({next(iter(scores.values()))['examples']} rows), trained on {ROWS} rows",
    )
    for (name, r), t in zip(scores.items(), times, strict=True):
        table.add_row(name, f"{r['metrics']['accuracy']:.4f}", f"{t:.0f} s")
    floor = next(iter(scores.values()))["one_answer"]["accuracy"]  # the majority class's
    table.add_row("one class for every row (the floor)", f"{floor:.4f}", "-")
    console.print(table)
    stats = open_cache(OUT / "cache-1l_10t_0.1h").info.stats
    console.print(
        f"cache: built in {seconds['build']:.0f} s, {stats.bytes_per_example:.0f} B/example "
        f"vs {stats.full_fp16_bytes_per_example:,.0f} B for the full fp16 HSK "
        f"({stats.hsk_fraction:.3%} of its values)"
    )
    console.print(
        f"KD step (stage 1, batch 32): online {probes['online'] * 1e3:.0f} ms, "
        f"offline {probes['offline'] * 1e3:.0f} ms -> speedup "
        f"{probes['online'] / probes['offline']:.2f}x"
    )


def main() -> None:
    quiet_transformers()
    data = find_data()
    task = None if data != "glue" else "sst2"
    console.print(f"data: {data} (first {ROWS} training rows, full dev split); out: {OUT}")
    seconds = train_all(data, task)
    summary(data, task, seconds, speed_probe(data, task))


if __name__ == "__main__":
    main()
