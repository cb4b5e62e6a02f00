"""`fit`'s peak memory over one epoch of a cache and of one 10x its size (`bench step`'s RSS
probe): the reader maps chunks, so its resident set should barely grow with the cache.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hsktrain.bench.inputs import make_teacher, synthetic_cache, synthetic_sst2

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
        synthetic_cache(
            data,
            cache,
            teacher,
            hsk="full",
            max_length=128,
            student_layers=2,
            limit=n,
            l_top=2,
            batch_size=256,
        )
        out[f"{label}_rows"] = n
        out[f"{label}_mb"] = peak_rss_mb(str(cache), str(work / f"rss-run-{label}"))
    out["growth"] = out["large_mb"] / out["small_mb"] - 1
    return out
