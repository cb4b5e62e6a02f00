"""`hsktrain bench reader`: rows/s of the cache reader alone (read, decode into a `Batch` with
`hsktrain.batch.from_cache`, pinned and copied when the device is CUDA), beside the bare
student step's rows/s on the same device, so a run says which side a training run waits on.

For each cache (by default three built here: `1l_10t_0.1h`, `3l_20t_0.5h` and `full`, from a
random-weight 6L-384 teacher, MiniLM-L6's shape, as the step bench's presets build theirs;
or `--cache`) and each batch size (32, 256) it times the loader + decode with the process held
to one core (the issue's budget: one core for the reader, the rest for the step), without and
with `loader.prefetched` (the background thread `fit` reads ahead with; alone on one core it
measures the thread's own cost, since no step runs beside it). With `remote` the built caches
go to a loopback S3 server (`remote.py`) and are read through the local shard copy: a cold
epoch (every shard downloaded) and warm reads. The disk's read bandwidth is measured in the same
run with `dd` (O_DIRECT, so the page cache is not what is timed) on the full cache's largest
shard, and the full cache is read once more with its pages dropped from the page cache.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch

from hskcache.devices import amp_problem
from hskcache.errors import ConfigError
from hskcache.reader import Cache, open_cache
from hskcache.shapes import student_shape
from hsktrain.batch import from_cache
from hsktrain.bench.inputs import make_teacher, synthetic_cache, synthetic_sst2
from hsktrain.bench.timer import every_epoch, machine, sync, time_steps
from hsktrain.bench.verdict import verdicts
from hsktrain.config import FitConfig
from hsktrain.loader import ChunkShuffleLoader, prefetched
from hsktrain.prepare import prepare

CONFIGS = ("1l_10t_0.1h", "3l_20t_0.5h", "full")
BATCHES = (32, 256)
# Issue 21's targets, with one core for the reader: the sparse cache at 20,000 rows/s (batch
# 32), the full one at the disk's read bandwidth (the reader's MB/s over dd's).
TARGETS = {
    "rows_per_s_1l_10t_0.1h_b32": (">=", 20000.0),
    "full_b32_over_disk": (">=", 1.0),
    "full_b256_over_disk": (">=", 1.0),
}


@dataclass
class ReaderBenchConfig:
    """`hsktrain bench reader`."""

    cache: str | None = None  # time this cache (path or URL) instead of building three
    teacher: str | None = None  # None: a random-weight 6L-384 teacher (MiniLM-L6's shape)
    rows: int = 1024  # rows of each cache built
    seq: int = 64  # tokens per synthetic row
    seconds: float = 1.0  # each reader figure reads for at least this long, and one epoch
    steps: int = 2  # timed bare student steps per batch size (median), after one warm-up
    student: str = "tinybert4"  # the bare step's student
    remote: bool = False  # also read the built caches from a loopback S3 server
    device: str = "cpu"
    amp: str = "none"  # autocast of the bare step's forward: none | bf16 | fp16
    workdir: str | None = None  # None: a temporary folder

    def validate(self) -> None:
        problems = []
        if self.rows < max(BATCHES):
            problems.append(f"rows must be >= {max(BATCHES)} (one batch of each size)")
        if self.seconds <= 0 or self.steps < 1:
            problems.append("seconds must be > 0 and steps >= 1")
        if problem := amp_problem(self.amp, self.device):
            problems.append(problem)
        if self.cache is not None and (self.remote or self.teacher is not None):
            problems.append("--cache times that cache as it is: drop --remote and --teacher")
        if problems:
            raise ConfigError("; ".join(problems))


@contextmanager
def one_core() -> Iterator[None]:
    """Hold this process (every thread) and torch's pool to one core, as the reader's budget."""
    threads = torch.get_num_threads()
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    torch.set_num_threads(1)
    if cores:
        os.sched_setaffinity(0, {min(cores)})
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if cores:
            os.sched_setaffinity(0, cores)


def reader_rows_per_s(
    cache: Cache, batch: int, device: str, prefetch: bool, seconds: float, warm: bool = True
) -> float:
    """Rows/s of the loader + `from_cache` over `cache`, read for `seconds` and one epoch.

    `warm`: one batch first, untimed (the first read's imports and shard index reads); a cold
    read (remote, first epoch) times exactly one epoch from the first batch on.
    """
    loader = ChunkShuffleLoader(cache, batch, seed=0)
    made = map(lambda rows: from_cache(rows, cache.manifest, device), every_epoch(loader))
    batches = prefetched(made) if prefetch else made
    if warm:
        next(batches)
    epoch = loader.rows_per_epoch()
    rows, t0 = 0, time.perf_counter()
    for b in batches:
        rows += len(b.labels)
        elapsed = time.perf_counter() - t0
        if rows >= epoch and (not warm or elapsed >= seconds):
            break
    sync(device)
    elapsed = time.perf_counter() - t0
    if prefetch:
        batches.close()  # stops the thread
    return rows / elapsed


def step_rows_per_s(cache: str, batch: int, cfg: ReaderBenchConfig, work: Path) -> float:
    """Rows/s of the bare student step (CE on the cache's own rows and labels, all cores),
    median of `cfg.steps` steps after one warm-up."""
    fcfg = FitConfig(
        out=str(work / f"r-bare-{batch}"),
        cache=cache,
        mode="ce",
        student=cfg.student,
        batch_size=batch,
        device=cfg.device,
        amp=cfg.amp,
        verify=False,
        local_cache=str(work / "local-cache") if "://" in cache else None,
    )
    fcfg.validate()
    fcfg = fcfg.resolved()
    torch.manual_seed(0)
    run = prepare(fcfg)
    totals, _ = time_steps(run, "ce", fcfg, islice(every_epoch(run.loader), 1 + cfg.steps))
    return batch / statistics.median(totals[1:])


def drop_pages(folder: Path) -> None:
    """Drop the page cache's copy of every file under `folder` (posix_fadvise DONTNEED: no root
    needed), so the next read comes from the disk."""
    for path in (p for p in folder.rglob("*") if p.is_file()):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


_DD = re.compile(r"^(\d+) bytes.* copied, ([\d.]+) s", re.MULTILINE)  # "(1.0 MB, ...)" or none


def disk_read_bandwidth(folder: Path) -> dict:
    """MB/s of `dd` reading every shard file of the cache `folder`'s layer values with O_DIRECT
    (past the page cache); where the file system refuses O_DIRECT (tmpfs), plain reads after
    `drop_pages`.

    Returns:
        {"files", "bytes", "seconds", "mb_per_s", "method"}.
    """
    shards = sorted(p for p in (folder / "layers").glob("*/values/**/*") if p.is_file())
    for flags, method in ((["iflag=direct"], "dd iflag=direct"), ([], "dd, pages dropped")):
        drop_pages(folder / "layers")
        nbytes, secs = 0, 0.0
        for path in shards:
            cmd = ["dd", f"if={path}", "of=/dev/null", "bs=4M", *flags]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={"LC_ALL": "C"})
            found = _DD.search(proc.stderr)
            if proc.returncode != 0 or not found:
                break
            nbytes, secs = nbytes + int(found[1]), secs + float(found[2])
        else:
            return {
                "files": len(shards),
                "bytes": nbytes,
                "seconds": secs,
                "mb_per_s": nbytes / secs / 1e6,
                "method": method,
            }
    raise RuntimeError(f"dd could not read {path}: {proc.stderr.strip()[-300:]}")


def cache_bytes_per_row(cache: Cache) -> float:
    """Bytes on disk per row of the cache (every array, as stored)."""
    return cache.info.stats.bytes_per_example


def build_caches(cfg: ReaderBenchConfig, work: Path) -> dict[str, str]:
    """The three caches of the default run, built from one set of synthetic rows."""
    teacher = cfg.teacher or make_teacher("minilm-shape", work / "teacher")[0]
    data = synthetic_sst2(work / "data", cfg.rows, cfg.seq)
    caches = {}
    for hsk in CONFIGS:
        out = work / f"cache-{hsk}"
        synthetic_cache(
            data,
            out,
            teacher,
            hsk=hsk,
            max_length=cfg.seq,
            student_layers=student_shape(cfg.student)["num_hidden_layers"],
            batch_size=64,
            device=cfg.device,
        )
        caches[hsk] = str(out)
    return caches


def time_reader(cache: Cache, cfg: ReaderBenchConfig, cold: bool = False) -> dict[str, dict]:
    """{batch: {"plain": rows/s, "prefetched": rows/s}} on one core; `cold`: the first epoch
    of a remote cache (no prefetch: it times the downloads) comes first, as "cold"."""
    out: dict[str, dict] = {}
    with one_core():
        for batch in BATCHES:
            row = {}
            if cold and batch == BATCHES[0]:
                row["cold"] = reader_rows_per_s(cache, batch, cfg.device, False, 0, warm=False)
            for name, prefetch in (("plain", False), ("prefetched", True)):
                row[name] = reader_rows_per_s(cache, batch, cfg.device, prefetch, cfg.seconds)
            out[str(batch)] = row
    return out


def run_reader_bench(cfg: ReaderBenchConfig, log: Callable[[str], None]) -> dict:
    """Every reader figure of the run, the bare step beside them, the disk, the verdicts;
    `log` hears each stage as it starts."""
    cfg.validate()
    load_start = os.getloadavg()
    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="hskbench-reader-"))
    work.mkdir(parents=True, exist_ok=True)
    if cfg.cache is not None:
        given = open_cache(cfg.cache, True, work / "local-cache")
        caches = {given.info.selection.name: cfg.cache}
    else:
        log(f"building {', '.join(CONFIGS)} ({cfg.rows} rows each)")
        caches = build_caches(cfg, work)
    log("timing the reader, one core")
    rows_per_s, bytes_per_row, where, rows = {}, {}, {}, {}
    for hsk, url in caches.items():
        cache = open_cache(url, True, work / "local-cache")
        bytes_per_row[hsk] = cache_bytes_per_row(cache)
        rows[hsk] = cache.num_examples
        where[hsk] = "local" if cache.local is None else "remote"
        rows_per_s[hsk] = {where[hsk]: time_reader(cache, cfg, cold=cache.local is not None)}
    log("timing the bare student step")
    first = next(iter(caches.values()))
    step = {str(b): step_rows_per_s(first, b, cfg, work) for b in BATCHES}
    result = {
        "machine": machine(),
        "device": cfg.device,
        "student": cfg.student,
        "seq": cfg.seq,
        "rows": rows,
        "teacher": cfg.teacher
        or ("a random-weight 6L-384 teacher (MiniLM-L6's shape)" if cfg.cache is None else None),
        "cache": cfg.cache,
        "bytes_per_row": bytes_per_row,
        "rows_per_s": rows_per_s,
        "step_rows_per_s": step,
    }
    if cfg.remote:
        log("timing the reader through a loopback S3 server")
        for hsk, remote in remote_rates(caches, cfg, work).items():
            rows_per_s[hsk]["remote"] = remote
    if "full" in caches and where["full"] == "local":
        log("timing the disk")
        full = Path(caches["full"])
        result["disk"] = disk_read_bandwidth(full)
        drop_pages(full)
        with one_core():
            cold = reader_rows_per_s(open_cache(full), BATCHES[0], cfg.device, False, 0, False)
        rows_per_s["full"]["local"]["32"]["pages_dropped"] = cold
    result["bottleneck"] = bottlenecks(rows_per_s, step)
    result["load"] = {"start": load_start, "end": os.getloadavg()}
    result["targets"] = verdicts(figures(result), TARGETS)
    return result


def remote_rates(caches: dict[str, str], cfg: ReaderBenchConfig, work: Path) -> dict:
    """`time_reader` of each local cache uploaded to a loopback S3 server, read through a
    fresh local shard copy: the cold epoch first, then warm reads."""
    import s3fs

    from hsktrain.bench.remote import loopback_s3

    out = {}
    with loopback_s3() as bucket:
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        for hsk, path in caches.items():
            url = f"{bucket}/{hsk}"
            fs.put(path, url[len("s3://") :], recursive=True)
            cache = open_cache(url, True, work / "remote-copy")
            out[hsk] = time_reader(cache, cfg, cold=True)
    return out


def bottlenecks(rows_per_s: dict, step: dict[str, float]) -> dict:
    """Per cache and batch size: which side is slower, the reader (plain, one core) or the bare
    step, and the reader's rows/s over the step's (> 1: the reader keeps up)."""
    out = {}
    for hsk, sides in rows_per_s.items():
        rates = sides.get("local") or sides["remote"]
        out[hsk] = {
            b: {
                "reader_over_step": rates[b]["plain"] / step[b],
                "side": "step" if rates[b]["plain"] >= step[b] else "reader",
            }
            for b in rates
        }
    return out


def figures(result: dict) -> dict[str, float]:
    """The figures the targets judge, from the ones measured (a given --cache has fewer)."""
    rates, out = result["rows_per_s"], {}
    if "local" in rates.get("1l_10t_0.1h", {}):
        out["rows_per_s_1l_10t_0.1h_b32"] = rates["1l_10t_0.1h"]["local"]["32"]["plain"]
    if "disk" in result:
        mb_per_row = result["bytes_per_row"]["full"] / 1e6
        for b in BATCHES:
            reader_mb = rates["full"]["local"][str(b)]["plain"] * mb_per_row
            out[f"full_b{b}_over_disk"] = reader_mb / result["disk"]["mb_per_s"]
    return out
