"""`make demo`: the whole pipeline on the default teacher and GLUE SST-2, in a few minutes.

Fine-tunes the MiniLM-L6 teacher on the first ROWS training rows, builds a `1l_10t_0.1h` cache
from it, trains a TinyBERT4-shaped student selected from the teacher twice (CE on labels only,
6 epochs, and distilled from the cache with the paper's two stages, 3 + 3), evaluates all three
on the dev split, and times online vs offline KD steps. Data: $GLUE/SST-2 when that folder
exists, else the Hugging Face hub's GLUE when reachable, else a clear message.
"""

from __future__ import annotations

import json
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
from hskcache.teacher import default_teacher_path
from hsktrain.config import FitConfig
from hsktrain.evaluate import evaluate_checkpoint
from hsktrain.glue import find_task_data
from hsktrain.train import fit

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


def timed(label: str, fn):
    console.rule(f"[bold]{label}")
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def step_seconds(out: Path) -> float:
    """Median seconds per step of a short run, from its step timestamps in metrics.jsonl."""
    stamps = [
        json.loads(x)["t"]
        for x in (out / "metrics.jsonl").read_text().splitlines()
        if "t" in json.loads(x)
    ]
    gaps = sorted(b - a for a, b in zip(stamps[5:], stamps[6:], strict=False))  # skip warm-up
    return gaps[len(gaps) // 2]


def main() -> None:
    quiet_transformers()
    data = find_data()
    task = None if data != "glue" else "sst2"
    console.print(f"data: {data} (first {ROWS} training rows, full dev split); out: {OUT}")
    teacher_dir = OUT / "teacher"

    _, t_teacher = timed(
        "1/5 fine-tune the MiniLM-L6 teacher (CE, 2 epochs)",
        lambda: fit(
            FitConfig(
                out=str(teacher_dir),
                data=data,
                task=task,
                dev_data=data,
                limit=ROWS,
                mode="ce",
                init="pretrained",
                init_from=str(default_teacher_path()),
                pred_epochs=2,
                pred_lr=5e-5,
                warmup=0.1,
            )
        ),
    )
    teacher = str(teacher_dir / "best")
    cache = OUT / "cache-1l_10t_0.1h"
    _, t_build = timed(
        "2/5 build the 1l_10t_0.1h cache (teacher runs once)",
        lambda: build_cache(
            BuildConfig(
                data=data,
                task=task,
                out=str(cache),
                teacher=teacher,
                limit=ROWS,
                hsk="1l_10t_0.1h",
                overwrite=True,
            )
        ),
    )
    stats = open_cache(cache).info.stats
    student = dict(student="tinybert4", init="select", init_from=teacher, dev_data=data)
    _, t_ce = timed(
        "3/5 CE-only student (selected from the teacher, labels only)",
        lambda: fit(
            FitConfig(
                out=str(OUT / "student-ce"),
                data=data,
                task=task,
                limit=ROWS,
                mode="ce",
                pred_epochs=6,  # as many passes as the KD student (3 + 3)
                pred_lr=1e-4,
                **student,
            )
        ),
    )
    _, t_kd = timed(
        "4/5 distilled student from the cache (no teacher in memory)",
        lambda: fit(
            FitConfig(
                out=str(OUT / "student-kd"),
                cache=str(cache),
                hsk_epochs=3,
                pred_epochs=3,
                **student,
            )
        ),
    )
    console.rule("[bold]5/5 speed: online KD (teacher live) vs offline KD (cache), 30 steps")
    probes = {}
    for name, extra in (
        ("online", {"online_teacher": teacher, "data": data, "task": task, "limit": ROWS}),
        ("offline", {"cache": str(cache)}),
    ):
        out = OUT / f"speed-{name}"
        fit(
            FitConfig(
                out=str(out),
                max_steps=30,
                mode="hsk",
                student="tinybert4",
                init_from=teacher,
                **extra,
            ),
            show_progress=False,
        )
        probes[name] = step_seconds(out)
    scores = {
        name: evaluate_checkpoint(path, data, task, "dev", None, None, 128, "cpu")
        for name, path in (
            ("teacher (MiniLM-L6, fine-tuned)", teacher),
            ("student CE only (TinyBERT4 shape)", OUT / "student-ce/best"),
            ("student 1l_10t_0.1h KD, offline", OUT / "student-kd/best"),
        )
    }
    times = [t_teacher, t_ce, t_kd]
    table = Table(
        "model",
        "dev accuracy",
        "train time",
        title=f"SST-2 dev ({next(iter(scores.values()))['examples']} rows), trained on {ROWS} rows",
    )
    for (name, r), t in zip(scores.items(), times, strict=True):
        table.add_row(name, f"{r['metrics']['accuracy']:.4f}", f"{t:.0f} s")
    console.print(table)
    console.print(
        f"cache: built in {t_build:.0f} s, {stats.bytes_per_example:.0f} B/example "
        f"vs {stats.full_fp16_bytes_per_example:,.0f} B for the full fp16 HSK "
        f"({stats.hsk_fraction:.3%} of its values)"
    )
    console.print(
        f"KD step (stage 1, batch 32): online {probes['online'] * 1e3:.0f} ms, "
        f"offline {probes['offline'] * 1e3:.0f} ms -> speedup "
        f"{probes['online'] / probes['offline']:.2f}x"
    )


if __name__ == "__main__":
    main()
