"""`hsktrain bench`: online vs offline KD step time, reader stall, build throughput, cache size,
and `fit`'s peak memory, all measured in one process and one run (README: `hsktrain bench`).

Step times are medians after warm-up, on identical shapes: every synthetic row is exactly `seq`
tokens, so the three step kinds see the same batch shapes. The BERT-base-shaped teachers carry
random weights (labelled so); the `mpnet-tinybert4` preset times the real BERT-base-sized MPNet
(`make mpnet` assembles it) at the same shapes, to check that random weights time like real ones.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hskcache.build import build_cache
from hskcache.config import BuildConfig, DeriveConfig
from hskcache.data import load_split
from hskcache.derive import derive_cache
from hskcache.errors import ConfigError, TeacherError
from hskcache.inspect import describe, floor_bytes
from hskcache.reader import open_cache
from hskcache.shapes import student_shape
from hskcache.teacher import Teacher, accepts, default_teacher_path, load_teacher
from hskcache.tokenize import Encoded, tokenize
from hsktrain.config import FitConfig
from hsktrain.prepare import prepare
from hsktrain.step import Distiller, make_optimizer, make_scaler, train_step

TEACHERS = {  # random-weight teacher shapes; None = a real pretrained teacher (`real_teacher`)
    "bert-base": {
        "num_hidden_layers": 12,
        "hidden_size": 768,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "tiny": {
        "num_hidden_layers": 2,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "intermediate_size": 64,
    },
    "minilm": None,
    "mpnet": None,
}
# The real 12L-768 MPNet, assembled by `make mpnet` (relative to the repository root, where
# `make bench-mpnet` runs).
MPNET_DIR = Path("models/all-mpnet-base-v2")


@dataclass(frozen=True)
class Preset:
    teacher: str
    student: str
    seq: int
    batch: int


PRESETS = {
    "bert-base-tinybert4": Preset("bert-base", "tinybert4", 128, 32),
    "bert-base-tinybert4-64": Preset("bert-base", "tinybert4", 64, 32),
    "mpnet-tinybert4": Preset("mpnet", "tinybert4", 128, 32),
    "minilm": Preset("minilm", "tinybert4", 64, 32),
    "tiny": Preset("tiny", "tiny", 16, 4),
}
TARGETS = {  # name: (comparison, bound): the targets README's `hsktrain bench` lists
    "offline_over_bare": ("<=", 1.05),
    "stall_fraction": ("<=", 0.02),
    "efficiency": (">=", 0.95),
    "speedup": (">=", 3.4),
    "build_over_forward": (">=", 0.9),
    "size_ratio": (">=", 300.0),
    "floor_ratio": ("<=", 1.5),  # the cache against its kept values in fp16
    "int8_floor_ratio": ("<=", 1.0),  # an int8 cache (zstd values) against the same floor
    "offline_int8_over_bare": ("<=", 1.05),  # ... and its reads still cheap
    "rss_growth": ("<=", 0.10),
}
# The speedup and floor targets are set for a BERT-base-sized teacher (the paper's scale): a
# small teacher such as MiniLM-L6 costs little more than the student, so its ceiling is far
# lower, and its few kept values weigh little next to a row's token ids.
BERT_BASE_ONLY = {"speedup", "floor_ratio", "int8_floor_ratio"}
BERT_BASE_SIZED = {"bert-base", "mpnet"}


@dataclass
class BenchConfig:
    preset: str = "bert-base-tinybert4"
    steps: int = 20
    warmup: int = 3
    hsk: str = "1l_10t_0.1h"
    device: str = "cpu"
    rss: bool = True
    rss_rows: int = 2000
    workdir: str | None = None

    def validate(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset '{self.preset}'; use one of {list(PRESETS)}")
        if self.steps < 3 or self.warmup < 1:
            raise ConfigError("need steps >= 3 and warmup >= 1 for a median after warm-up")


def make_teacher(kind: str, folder: Path, seed: int = 0) -> tuple[str, bool]:
    """A teacher folder for `kind`; returns (path, random_weights)."""
    # lazy: transformers takes seconds to import; commands that load no model skip it
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    if TEACHERS[kind] is None:
        return real_teacher(kind), False
    # BERT uncased, 30522
    tok = AutoTokenizer.from_pretrained(default_teacher_path(), trust_remote_code=False)
    config = BertConfig(
        vocab_size=tok.vocab_size, max_position_embeddings=512, num_labels=2, **TEACHERS[kind]
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder), True


def real_teacher(kind: str) -> str:
    """The folder of a real pretrained teacher: the MiniLM-L6 package, or the assembled MPNet.

    Raises:
        TeacherError: the MPNet folder is missing (one line naming `make mpnet`).
    """
    if kind == "minilm":
        return str(default_teacher_path())
    if not (MPNET_DIR / "config.json").is_file():
        raise TeacherError(
            f"{MPNET_DIR}: no MPNet teacher there (no config.json); run `make mpnet` in the "
            "repository root first (it assembles all-mpnet-base-v2 from PyPI, about 420 MB)"
        )
    return str(MPNET_DIR)


def synthetic_sst2(folder: Path, rows: int, seq: int, seed: int = 0) -> str:
    """SST-2-format rows of random vocabulary words, each longer than `seq` tokens."""
    # lazy: transformers takes seconds to import; commands that load no model skip it
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_teacher_path(), trust_remote_code=False)
    vocab = tok.get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and w.islower() and len(w) > 2)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["sentence\tlabel"] + [
        " ".join(rng.choice(words, seq)) + f"\t{rng.integers(2)}" for _ in range(rows)
    ]
    for split in ("train", "dev"):
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return str(folder)


def bare_forward_timer(
    teacher_path: str, data: str, rows: int, seq: int, batch: int, device: str
) -> Callable[[], float]:
    """Load the teacher and tokenize the build's rows once; return a function that times one
    pass of the teacher alone (sdpa, no hidden states) over the build's batches after the
    first, a warm-up that the build's timing skips too."""
    teacher = load_teacher(teacher_path, 2, device)
    enc = tokenize(teacher.tokenizer, load_split(data, "sst2", "train", limit=rows), seq)
    return forward_timer(teacher, enc, data_order_batches(rows, batch), device)


def data_order_batches(rows: int, batch: int) -> list[np.ndarray]:
    """Row indices of batches of consecutive rows: how a plain transformers loop batches."""
    return [np.arange(lo, min(rows, lo + batch)) for lo in range(0, rows, batch)]


def forward_timer(
    teacher: Teacher, enc: Encoded, batches: list[np.ndarray], device: str
) -> Callable[[], float]:
    """A function that times one pass of the teacher alone (sdpa, no hidden states, nothing
    selected or stored) over `batches` (row indices into `enc`), each trimmed to its longest
    row (dynamic padding), after the first batch: a warm-up that the build's timing skips too.
    """
    ids = torch.from_numpy(enc.input_ids).long()
    tt = torch.from_numpy(enc.token_type_ids).long()
    lengths = torch.from_numpy(enc.lengths).long()
    segments = accepts(teacher.model, "token_type_ids")  # MPNet has no segment ids

    def one_pass() -> float:
        t0 = None
        with torch.inference_mode():
            for idx in batches:
                rows = torch.from_numpy(idx)
                T = int(enc.lengths[idx].max())
                kw = {"token_type_ids": tt[rows, :T].to(device)} if segments else {}
                mask = torch.arange(T)[None, :] < lengths[rows, None]  # the build's mask
                teacher.model(
                    input_ids=ids[rows, :T].to(device), attention_mask=mask.long().to(device), **kw
                )
                t0 = t0 or time.perf_counter()
        return time.perf_counter() - t0

    return one_pass


def time_steps(run, stage: str, fit_cfg, warmup: int, steps: int) -> tuple[list, list]:
    """Per-step (total, batch-ready) seconds of `steps` steps after `warmup` steps: `fit`'s own
    `train_step`, so the bench times exactly the update the training loop makes."""
    net = Distiller(run.model, run.proj, run.teacher_width, run.regression)
    opt = make_optimizer(net, 5e-5, 0.01)
    scaler = make_scaler(fit_cfg.device, fit_cfg.amp)
    run.model.train()
    totals, ready = [], []
    epoch, it = 0, run.loader.iterate(0)
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        rows = next(it, None)
        if rows is None:
            epoch += 1
            it = run.loader.iterate(epoch)
            rows = next(it)
        b = run.make_batch(rows)
        t1 = time.perf_counter()
        train_step(net, opt, scaler, b, stage, 5e-5, fit_cfg)
        if i >= warmup:
            totals.append(time.perf_counter() - t0)
            ready.append(t1 - t0)
    return totals, ready


# Peak RSS read inside the child. Not getrusage's ru_maxrss: Linux carries it across fork+exec,
# so a child of this (BERT-base-holding) process would report the parent's peak.
_PEAK = """
import runpy, sys
sys.argv = ["hsktrain"] + sys.argv[1:]
try:
    runpy.run_module("hsktrain.cli", run_name="__main__")
finally:
    hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")]
    print("PEAK_RSS_KB", hwm[0].split()[1], file=sys.stderr)
"""


def peak_rss_mb(cache: str, out: str) -> float:
    """Peak RSS (VmHWM) of a one-epoch `hsktrain fit` on `cache`, in a fresh process."""
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _PEAK,
            "fit",
            "--cache",
            cache,
            "--out",
            out,
            "--student",
            "tiny",
            "--mode",
            "hsk",
            "--hsk-epochs",
            "1",
            "--no-verify",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    for line in proc.stderr.splitlines():
        if line.startswith("PEAK_RSS_KB"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"fit for the RSS probe failed: {proc.stderr[-1000:]}")


def rss_probe(work: Path, rows: int) -> dict:
    """`fit`'s peak RSS over one epoch of a cache and of one 10x its size.

    The probe caches hold the full HSK of a tiny random teacher at seq 128 (about 25 KB a row,
    so the 10x cache is ~0.5 GB) because only the reader's memory is in question here.
    """
    teacher, _ = make_teacher("tiny", work / "rss-teacher")
    data = synthetic_sst2(work / "rss-data", rows * 10, 128)
    out = {}
    for label, n in (("small", rows), ("large", rows * 10)):
        cache = work / f"rss-cache-{label}"
        build_cache(
            BuildConfig(
                data=data,
                task="sst2",
                out=str(cache),
                teacher=teacher,
                hsk="full",
                max_length=128,
                student_layers=2,
                limit=n,
                l_top=2,
                batch_size=256,
                overwrite=True,
            ),
            show_progress=False,
        )
        out[f"{label}_rows"] = n
        out[f"{label}_mb"] = peak_rss_mb(str(cache), str(work / f"rss-run-{label}"))
    out["growth"] = out["large_mb"] / out["small_mb"] - 1
    return out


def run_bench(cfg: BenchConfig) -> dict:
    """Run every measurement of a preset; return the figures and their targets."""
    cfg.validate()
    load_start = os.getloadavg()
    p = PRESETS[cfg.preset]
    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="hskbench-"))
    work.mkdir(parents=True, exist_ok=True)
    n = (cfg.warmup + cfg.steps) * p.batch
    teacher, random_weights = make_teacher(p.teacher, work / "teacher")
    data = synthetic_sst2(work / "data", n, p.seq)
    n_student = student_shape(p.student)["num_hidden_layers"]
    cache = work / "cache"
    # The bare forward runs before and after the build and the two are averaged: the first
    # pass warms the process (the first heavy work in a fresh process runs slow for more than
    # one batch), and the pair cancels load drifting on a shared machine during the build.
    forward_pass = bare_forward_timer(teacher, data, n, p.seq, p.batch, cfg.device)
    forward_before = forward_pass()
    timings: dict = {}
    build_cache(
        BuildConfig(
            data=data,
            task="sst2",
            out=str(cache),
            teacher=teacher,
            hsk=cfg.hsk,
            max_length=p.seq,
            student_layers=n_student,
            batch_size=p.batch,
            device=cfg.device,
            overwrite=True,
        ),
        show_progress=False,
        timings=timings,
    )
    forward_after = forward_pass()
    forward_s = (forward_before + forward_after) / 2
    opened = open_cache(cache)
    stats = opened.info.stats
    by_array = {a["name"]: a["bytes"] / n for a in describe(opened)["arrays"]}
    int8_sizes = {}  # the same rows as int8 caches, cut out of this one (exact, no teacher)
    for compressor in ("none", "zstd"):
        out = work / f"cache-int8-{compressor}"
        derive_cache(
            DeriveConfig(
                src=str(cache), out=str(out), hsk=cfg.hsk, value_dtype="int8",
                compressor=compressor, overwrite=True,
            ),
            show_progress=False,
        )  # fmt: skip
        int8_sizes[compressor] = open_cache(out).info.stats.bytes_per_example

    common = dict(
        student=p.student,
        init_from=teacher,
        batch_size=p.batch,
        device=cfg.device,
        max_length=p.seq,
    )
    runs = {
        "bare": (
            "ce",
            FitConfig(out=str(work / "r-bare"), data=data, task="sst2", mode="ce", **common),
        ),
        "offline": (
            "hsk",
            FitConfig(
                out=str(work / "r-off"), cache=str(cache), mode="hsk", verify=False, **common
            ),
        ),
        "online": (
            "hsk",
            FitConfig(
                out=str(work / "r-on"),
                online_teacher=teacher,
                data=data,
                task="sst2",
                mode="hsk",
                hsk=cfg.hsk,
                **common,
            ),
        ),
    }
    runs["offline_int8"] = (
        "hsk",
        FitConfig(
            out=str(work / "r-off-int8"), cache=str(work / "cache-int8-zstd"), mode="hsk",
            verify=False, **common,
        ),
    )  # fmt: skip
    step, stall = {}, {}
    for name, (stage, fcfg) in runs.items():
        torch.manual_seed(0)
        fcfg.validate()
        fcfg = fcfg.resolved()
        totals, ready = time_steps(prepare(fcfg), stage, fcfg, cfg.warmup, cfg.steps)
        step[name] = statistics.median(totals)
        stall[name] = statistics.median(ready)
    result = {
        "preset": cfg.preset,
        "teacher": f"{p.teacher} ({'random weights' if random_weights else 'pretrained'})",
        "student": p.student,
        "seq": p.seq,
        "batch": p.batch,
        "hsk": cfg.hsk,
        "steps": cfg.steps,
        "warmup": cfg.warmup,
        "device": cfg.device,
        "machine": machine(),
        "load": {"start": load_start, "end": os.getloadavg()},
        "step_ms": {k: v * 1e3 for k, v in step.items()},
        "offline_stall_ms": stall["offline"] * 1e3,
        "stall_fraction": stall["offline"] / step["offline"],
        "offline_over_bare": step["offline"] / step["bare"],
        "speedup": step["online"] / step["offline"],
        "ceiling": step["online"] / step["bare"],
        "build_rows_per_s": timings["rows"] / timings["seconds"],
        "forward_rows_per_s": (n - p.batch) / forward_s,
        "cache_bytes_per_example": stats.bytes_per_example,
        "full_fp16_bytes_per_example": stats.full_fp16_bytes_per_example,
        "cache_bytes_by_array": by_array,
        "floor_bytes_per_example": floor_bytes(opened.info),
        "int8_bytes_per_example": int8_sizes,
        "offline_int8_over_bare": step["offline_int8"] / step["bare"],
    }
    result["efficiency"] = result["speedup"] / result["ceiling"]
    result["build_over_forward"] = result["build_rows_per_s"] / result["forward_rows_per_s"]
    result["size_ratio"] = stats.full_fp16_bytes_per_example / stats.bytes_per_example
    result["floor_ratio"] = stats.bytes_per_example / result["floor_bytes_per_example"]
    result["int8_floor_ratio"] = int8_sizes["zstd"] / result["floor_bytes_per_example"]
    if cfg.rss:
        result["rss"] = rss_probe(work, cfg.rss_rows)
        result["rss_growth"] = result["rss"]["growth"]
    result["targets"] = {
        k: {
            "value": result[k],
            "target": f"{op} {bound}",
            "met": result[k] <= bound if op == "<=" else result[k] >= bound,
        }
        for k, (op, bound) in TARGETS.items()
        if k in result and (k not in BERT_BASE_ONLY or p.teacher in BERT_BASE_SIZED)
    }
    return result


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    threads = torch.get_num_threads()
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({threads} threads), "
        f"{platform.system()} {platform.release()}"
    )


def dumps(result: dict) -> str:
    return json.dumps(result, indent=2, default=float)
