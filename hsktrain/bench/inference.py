"""`hsktrain bench inference`: how much faster the student answers than its teacher, the number a
user distils for: rows/s and p50 / p95 latency per batch at batch 1 and 32, in PyTorch and in
ONNX (onnxruntime), on real rows of the task.

What is timed is the model call a server makes: a batch's token arrays in host memory in, its
logits in host memory out (on a GPU that includes both copies and the wait for the kernels).
Tokenization is done once before timing: it is the same work for both sides (one tokenizer
family), so counting it would only dilute the speedup. Batches are consecutive rows in data
order, each padded to its longest row (dynamic padding), as a server batches requests.

PyTorch runs the saved model in eval mode under `torch.inference_mode` (no autograd). ONNX runs
the file `hsktrain export --onnx` writes (the same exporter, checked there against PyTorch on
its own rows), exported into a temp folder unless `onnx_dir` is given, through onnxruntime with
as many intra-op threads as torch uses, so both runtimes get the same cores. The ONNX logits
are compared with PyTorch's again on every bench row, at every batch size.

Noise on a shared machine: every round times each batch size on the four sides in turn
(teacher, student, teacher-onnx, student-onnx), so load drifting over the run lands on every
side alike; each pass first runs its first `warmup` batches untimed (caches and allocators warm
again after the other sides ran), then times every batch. Each figure is the median over rounds
with the rounds' min and max beside it, and a speedup is the median of the rounds' own ratios.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hskcache.data import Columns, DataInput, Examples, load_split
from hskcache.devices import check_device
from hskcache.errors import ConfigError, ExportError
from hskcache.tasks import TASKS
from hskcache.teacher import check_token_limit
from hsktrain.bench.timer import machine
from hsktrain.bench.verdict import verdicts
from hsktrain.export import TOLERANCE, ExportReport, export_onnx
from hsktrain.saved import SavedModel, load_saved

MODELS = ("teacher", "student")
RUNTIMES = ("pytorch", "onnx")
MEASURES = ("rows_per_s", "p50_ms", "p95_ms")

Batch = dict[str, np.ndarray]  # one batch as the tokenizer gives it: name -> (B, T) int64
Call = Callable[[Batch], np.ndarray]  # a batch in, its (B, C) logits in host memory out


@dataclass
class InferenceBenchConfig:
    """`hsktrain bench inference`. None means the default the field's comment names."""

    teacher: str  # a model folder (a fine-tuned teacher, `hsktrain finetune`'s RUN/best)
    student: str  # a model folder (`hsktrain fit`'s RUN/best)
    data: DataInput  # anything `load_split` reads: GLUE folder, table, save_to_disk folder
    task: str | None = None  # None: the teacher's run's task, else inferred from the folder
    split: str = "dev"
    limit: int = 256  # the first rows of the split
    batch_sizes: tuple[int, ...] = (1, 32)
    rounds: int = 3  # each round times every side at every batch size once
    warmup: int = 2  # untimed batches before each timed pass
    device: str = "cpu"
    onnx: bool = True  # also time both models exported to ONNX (onnxruntime)
    onnx_dir: str | None = None  # where teacher.onnx / student.onnx go; None: a temp folder
    max_length: int | None = None  # None: the larger of the two folders' recorded limits
    tolerance: float = TOLERANCE  # largest |onnx - pytorch| logit accepted on the bench rows

    def validate(self) -> None:
        """Raises: ConfigError naming every bad setting at once, in one line."""
        p = []
        for name in MODELS:
            folder = Path(getattr(self, name))
            if not folder.is_dir():
                p.append(f"--{name} {folder}: no such folder; pass a model folder (RUN/best)")
        bad = [b for b in self.batch_sizes if not (isinstance(b, int) and b >= 1)]
        if not self.batch_sizes or bad:
            p.append(f"--batch-sizes {_csv(self.batch_sizes)}: each must be an integer >= 1")
        elif len(set(self.batch_sizes)) != len(self.batch_sizes):
            p.append(f"--batch-sizes {_csv(self.batch_sizes)}: a batch size is repeated")
        elif self.limit < max(self.batch_sizes):
            p.append(
                f"--limit {self.limit}: fewer rows than batch size {max(self.batch_sizes)}; "
                "give at least one full batch"
            )
        if self.limit < 1:
            p.append(f"--limit {self.limit} must be >= 1")
        if self.rounds < 1:
            p.append(f"--rounds {self.rounds} must be >= 1 (3 or more give a spread)")
        if self.warmup < 0:
            p.append(f"--warmup {self.warmup} must be >= 0")
        if self.max_length is not None and self.max_length < 2:
            p.append(f"--max-length {self.max_length} must be >= 2 ([CLS] and [SEP])")
        if not self.tolerance > 0:
            p.append(f"--tolerance {self.tolerance} must be > 0")
        if self.onnx_dir is not None and not self.onnx:
            p.append("--onnx-dir: only with ONNX timed (drop --no-onnx)")
        try:
            check_device(self.device)
        except ConfigError as e:
            p.append(str(e))
        if p:
            raise ConfigError("; ".join(p))


def run_inference_bench(cfg: InferenceBenchConfig) -> dict:
    """Time teacher and student, in PyTorch and (with `cfg.onnx`) ONNX, on real rows.

    Args:
        cfg: what to time; see `InferenceBenchConfig`.

    Returns:
        The result: what ran where, `sides[side][str(batch)]` with `rows`, `batches` and each of
        `rows_per_s`, `p50_ms`, `p95_ms` as {median, min, max, rounds}, and `speedup[runtime]
        [str(batch)]` (student rows/s over teacher rows/s) as {median, min, max, rounds}.

    Raises:
        ConfigError: a bad setting (every one named), the `export` extra missing, an
            `onnx_dir` that already holds the files, a device onnxruntime cannot use.
        TeacherError: a folder that is not a loadable model.
        DataFormatError: the rows cannot be read, or fewer than one batch of them.
        ExportError: a model does not export, or its ONNX logits differ past the tolerance.
    """
    cfg.validate()
    load_start = os.getloadavg()
    models = {name: _seeded(load_saved, getattr(cfg, name), cfg.device) for name in MODELS}
    max_length = _common_max_length(models, cfg.max_length)
    task = cfg.task or (models["teacher"].task if models["teacher"].task in TASKS else None)
    ex = load_split(cfg.data, task, cfg.split, Columns(), cfg.limit)  # no labels needed
    if len(ex) < max(cfg.batch_sizes):
        raise ConfigError(
            f"{ex.source}: {len(ex)} rows, fewer than batch size {max(cfg.batch_sizes)}; "
            "pass smaller --batch-sizes or more rows"
        )
    batches = {
        (name, b): _batches(models[name], ex, b, max_length)
        for name in MODELS
        for b in cfg.batch_sizes
    }
    calls = {name: _torch_call(models[name], cfg.device) for name in MODELS}
    with tempfile.TemporaryDirectory(prefix="hsk-bench-onnx-") as tmp:
        exports = _export(cfg, Path(cfg.onnx_dir or tmp)) if cfg.onnx else {}
        for name, report in exports.items():
            calls[f"{name}-onnx"] = _onnx_call(report.path, cfg.device)
        timed, diffs = _rounds(cfg, calls, batches)
    speedup = {
        runtime: {str(b): _speedup(timed, runtime, b) for b in cfg.batch_sizes}
        for runtime in RUNTIMES
        if runtime == "pytorch" or exports
    }
    return {
        "teacher": str(models["teacher"].folder),
        "student": str(models["student"].folder),
        "parameters": {name: _parameters(models[name]) for name in MODELS},
        "data": ex.source,
        "task": ex.task.name,
        "split": cfg.split,
        "rows": len(ex),
        "max_length": max_length,
        "tokens": {str(b): _tokens(batches["teacher", b]) for b in cfg.batch_sizes},
        "batch_sizes": list(cfg.batch_sizes),
        "rounds": cfg.rounds,
        "warmup": cfg.warmup,
        "device": cfg.device,
        "machine": machine(),
        "threads": {"torch": torch.get_num_threads(), "onnxruntime": torch.get_num_threads()},
        "load": {"start": load_start, "end": os.getloadavg()},
        "tolerance": cfg.tolerance,
        "onnx": {
            name: {
                "inputs": list(r.inputs),
                "export_rows": r.rows,
                "export_max_abs_diff": r.max_abs_diff,
                "bench_max_abs_diff": max(diffs[name, b] for b in cfg.batch_sizes),
            }
            for name, r in exports.items()
        },
        "sides": {side: {str(b): timed[side, b] for b in cfg.batch_sizes} for side in calls},
        "speedup": speedup,
        "targets": _targets(speedup),
    }


def _targets(speedup: dict) -> dict:
    """The student answers faster than its teacher at every batch size and runtime: each
    speedup >= 1, undecided where the rounds' min-max range holds 1."""
    figures, spreads = {}, {}
    for runtime, by in speedup.items():
        for b, f in by.items():
            name = f"{runtime}_batch_{b}_speedup"
            figures[name], spreads[name] = f["median"], (f["max"] - f["min"]) / 2
    return verdicts(figures, dict.fromkeys(figures, (">=", 1.0)), spreads)


def _common_max_length(models: dict[str, SavedModel], asked: int | None) -> int:
    """One token limit for both sides, so neither truncates a row the other reads whole: the
    one asked for, else the larger of the two runs' recorded limits."""
    n = asked or max(m.max_length for m in models.values())
    for m in models.values():
        check_token_limit(m.model.config, n)
        m.max_length = n
    return n


def _batches(saved: SavedModel, ex: Examples, size: int, max_length: int) -> list[Batch]:
    """Consecutive rows of `ex`, `size` at a time, each padded to its longest row."""
    out = []
    for lo in range(0, len(ex), size):
        pairs = ex.pairs[lo : lo + size] if ex.pairs is not None else None
        enc = saved.tokenizer(
            ex.texts[lo : lo + size],
            pairs,
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        out.append({k: v.astype(np.int64) for k, v in enc.items()})
    return out


def _tokens(batches: list[Batch]) -> dict[str, int]:
    """Real and padded tokens of one pass: what the model computes over."""
    masks = [b["attention_mask"] for b in batches]
    return {"real": int(sum(m.sum() for m in masks)), "padded": int(sum(m.size for m in masks))}


def _parameters(saved: SavedModel) -> int:
    return sum(p.numel() for p in saved.model.parameters())


def _torch_call(saved: SavedModel, device: str) -> Call:
    model = saved.model  # eval mode (load_saved)

    def call(batch: Batch) -> np.ndarray:
        with torch.inference_mode():
            inputs = {k: torch.from_numpy(v).to(device) for k, v in batch.items()}
            return model(**inputs).logits.float().cpu().numpy()  # .cpu() waits for the GPU

    return call


def _export(cfg: InferenceBenchConfig, folder: Path) -> dict[str, ExportReport]:
    """Both models as ONNX files in `folder`, each checked by the exporter."""
    files = {name: folder / f"{name}.onnx" for name in MODELS}
    there = [str(f) for f in files.values() if f.exists()]
    if there:
        raise ConfigError(
            f"--onnx-dir: {', '.join(there)} exists; give a new or empty folder (or none, for "
            "a temp one)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return {name: _seeded(export_onnx, getattr(cfg, name), files[name]) for name in MODELS}


def _seeded(load: Callable, *args):
    """`load(*args)` under a fixed seed: a folder without a classification head (the MiniLM-L6
    package) gets a fresh one at each load, and the PyTorch model and its ONNX export must get
    the same one (unseeded, their logits differed by 0.09 on SST-2 rows)."""
    with torch.random.fork_rng():  # leaves the caller's RNG alone
        torch.manual_seed(0)
        return load(*args)


def _onnx_call(path: Path, device: str) -> Call:
    import onnxruntime as ort  # lazy: the `export` extra; export_onnx checked it is installed

    provider = "CPUExecutionProvider" if device == "cpu" else "CUDAExecutionProvider"
    if provider not in ort.get_available_providers():
        raise ConfigError(
            f"--device {device}: this onnxruntime has no {provider} (it has "
            f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu, or pass "
            "--no-onnx"
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the cores PyTorch gets
    options.inter_op_num_threads = 1
    index = int(device.partition(":")[2] or 0)
    opts = [{"device_id": index}] if provider == "CUDAExecutionProvider" else [{}]
    session = ort.InferenceSession(str(path), options, providers=[provider], provider_options=opts)
    names = [i.name for i in session.get_inputs()]

    def call(batch: Batch) -> np.ndarray:
        return session.run(["logits"], {k: batch[k] for k in names})[0]

    return call


def _rounds(cfg: InferenceBenchConfig, calls: dict[str, Call], batches: dict):
    """Every side at every batch size, interleaved in rounds.

    Returns:
        (figures, diffs): figures[side, batch] as the result's `sides` holds them, and
        diffs[model, batch], the largest |onnx - pytorch| logit over every round's rows.
    """
    seconds: dict[tuple[str, int], list[list[float]]] = {}
    diffs: dict[tuple[str, int], float] = {}
    for _ in range(cfg.rounds):
        for b in cfg.batch_sizes:
            reference = {}
            for side, call in calls.items():  # teacher, student, teacher-onnx, student-onnx
                name = side.removesuffix("-onnx")
                per_batch, logits = _timed_pass(call, batches[name, b], cfg.warmup)
                seconds.setdefault((side, b), []).append(per_batch)
                if side == name:
                    reference[name] = logits
                else:
                    diff = float(np.max(np.abs(logits - reference[name])))
                    _check_onnx(getattr(cfg, name), diff, cfg.tolerance)
                    diffs[name, b] = max(diffs.get((name, b), 0.0), diff)
    figures = {}
    for (side, b), passes in seconds.items():
        rows = sum(len(x["input_ids"]) for x in batches[side.removesuffix("-onnx"), b])
        figures[side, b] = {
            "rows": rows,
            "batches": len(passes[0]),
            "rows_per_s": _spread([rows / sum(s) for s in passes]),
            "p50_ms": _spread([1000 * float(np.percentile(s, 50)) for s in passes]),
            "p95_ms": _spread([1000 * float(np.percentile(s, 95)) for s in passes]),
        }
    return figures, diffs


def _check_onnx(folder: str, diff: float, tolerance: float) -> None:
    """Refuse, at the first pass that shows it, an ONNX file that computes another model."""
    if not diff <= tolerance:  # NaN is refused too
        raise ExportError(
            f"{folder}: its ONNX logits differ from PyTorch's by up to {diff:.3g} on the bench "
            f"rows (tolerance {tolerance:g}); the ONNX timings would time another model. Pass "
            "a larger --tolerance if you accept it"
        )


def _timed_pass(call: Call, batches: list[Batch], warmup: int) -> tuple[list[float], np.ndarray]:
    """Seconds of each batch of one pass after `warmup` untimed ones, and the pass's logits."""
    for batch in batches[:warmup]:
        call(batch)
    seconds, logits = [], []
    for batch in batches:
        t0 = time.perf_counter()
        logits.append(call(batch))
        seconds.append(time.perf_counter() - t0)
    return seconds, np.concatenate(logits)


def _spread(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": values,
    }


def _speedup(timed: dict, runtime: str, b: int) -> dict:
    """Student rows/s over teacher rows/s, round by round (passes of one round ran close in
    time), and the median of those ratios."""
    suffix = "" if runtime == "pytorch" else "-onnx"
    teacher = timed[f"teacher{suffix}", b]["rows_per_s"]["rounds"]
    student = timed[f"student{suffix}", b]["rows_per_s"]["rounds"]
    return _spread([s / t for s, t in zip(student, teacher, strict=True)])


def _csv(values) -> str:
    return ",".join(str(v) for v in values)
