"""`hsktrain bench step --remote`: the reader's stall per step when the cache sits on object
storage.

The bench starts its own S3 API server (moto, in this process, on loopback: no setup, nothing
leaves the machine), uploads the bench's cache to it, and trains from `s3://` through the local
shard copy for two epochs. Epoch 1 is cold (every shard downloaded once, checked, written
locally); epoch 2 is warm (memory-mapped local copies, zero downloads). The stall is the time
from asking for a batch to holding it on the device; it is reported as a mean per step, not a
median, because downloads come in bursts at buffer boundaries and a median would hide them.
Target: warm stall <= 2% of the step. The server shares this process's CPU, so the cold figure
is an upper bound for a real bucket on a fast network, and a lower bound for a slow one.
"""

from __future__ import annotations

import gc
import logging
import os
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from hskcache.errors import ConfigError
from hsktrain.bench.timer import time_steps
from hsktrain.bench.verdict import verdicts
from hsktrain.config import FitConfig
from hsktrain.prepare import Run, prepare

TARGETS = {"remote_warm_stall_fraction": ("<=", 0.02)}  # name: (comparison, bound)


@contextmanager
def loopback_s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1; yields its endpoint URL (the tests' fixture uses it too).

    The AWS_* variables it sets (and restores after) point s3fs, in this process and in any
    subprocess started meanwhile, at it.

    Raises:
        ConfigError: s3fs or moto[server] is not installed.
    """
    try:
        import s3fs
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        raise ConfigError(
            f"a loopback S3 server needs s3fs and moto[server] ({e.name} is missing); "
            "pip install 's3fs' 'moto[server]' or the project's dev extra"
        ) from e

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    # fsspec caches filesystem instances by their arguments, not the environment: drop them on
    # the way in and out, so no instance outlives the server it points at
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield env["AWS_ENDPOINT_URL"]
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        # close the dropped instances' HTTP sessions now, while fsspec's event loop runs: left
        # to interpreter exit, aiohttp reports each as an unclosed client session
        gc.collect()
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def loopback_s3() -> Iterator[str]:
    """`loopback_s3_server` with one bucket; yields the bucket's s3:// URL."""
    import s3fs  # present: loopback_s3_server checked

    with loopback_s3_server():
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir("hskbench")
        yield "s3://hskbench"


def remote_stall(cache: Path, fit_common: dict, work: Path | None = None) -> dict:
    """Train 2 epochs (`--mode hsk`) from an S3 copy of the local cache `cache`; time the stall.

    Args:
        fit_common: FitConfig fields shared with the local runs (student, batch size, device).

    Returns:
        cold/warm mean stall and step in ms, the warm stall fraction, remote fetches per epoch
        (0 in the warm one), and the verdict on the warm stall fraction (`targets`).
    """
    import s3fs

    work = Path(work or tempfile.mkdtemp(prefix="hskbench-remote-"))
    with loopback_s3() as bucket:
        url = f"{bucket}/cache"
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.put(str(cache), url[len("s3://") :], recursive=True)
        cfg = FitConfig(
            out=str(work / "r-remote"),
            cache=url,
            mode="hsk",
            verify=False,
            local_cache=str(work / "local-cache"),
            **fit_common,
        )
        cfg.validate()
        cfg = cfg.resolved()
        torch.manual_seed(0)
        run = prepare(cfg)
        epochs = [_time_epoch(run, cfg, e) for e in (0, 1)]
    (cold_stall, cold_step, cold_fetch), (warm_stall, warm_step, warm_fetch) = epochs
    result = {
        "remote_cold_stall_ms": cold_stall * 1e3,
        "remote_warm_stall_ms": warm_stall * 1e3,
        "remote_warm_step_ms": warm_step * 1e3,
        "remote_cold_step_ms": cold_step * 1e3,
        "remote_fetches": {"cold": cold_fetch, "warm": warm_fetch},
        "remote_warm_stall_fraction": warm_stall / warm_step,
    }
    return result | {"targets": verdicts(result, TARGETS)}


def _time_epoch(run: Run, cfg: FitConfig, epoch: int) -> tuple[float, float, int]:
    """(mean stall, mean step, remote fetches) of one whole epoch of `fit`'s train_step."""
    source = run.loader.source
    before = source.remote_fetches
    steps, stalls = time_steps(run, "hsk", cfg, run.loader.iterate(epoch))
    return statistics.fmean(stalls), statistics.fmean(steps), source.remote_fetches - before
