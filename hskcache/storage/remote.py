"""Object storage's failure modes, bounded and put in one line: how long a call may take and
how often it is tried (`--timeout`, `--retries`), and which exceptions are the network's, the
store's or the disk's rather than a bug. Imports nothing heavy: both CLIs read it for --help.
"""

from __future__ import annotations

import os
from contextlib import suppress

from hskcache.errors import HskError

# Object-storage calls are bounded: a server that stops answering gives one error line within
# about retries x timeout seconds, not a hang (botocore's own default is 60 s a read, retried
# by botocore and again by s3fs: many minutes). Set per run with the CLIs' --timeout /
# --retries, or these variables (which torchrun ranks and other child processes inherit).
TIMEOUT_ENV, RETRIES_ENV = "HSKCACHE_TIMEOUT", "HSKCACHE_RETRIES"
DEFAULT_TIMEOUT, DEFAULT_RETRIES = 30.0, 3


def remote_settings() -> tuple[float, int]:
    """(seconds a connect or read may take, attempts per call) from the environment.

    Raises:
        HskError: a value that is not a positive number.
    """
    try:
        timeout = float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)
        retries = int(os.environ.get(RETRIES_ENV) or DEFAULT_RETRIES)
    except ValueError as e:
        raise HskError(f"{TIMEOUT_ENV} / {RETRIES_ENV}: not a number ({e})") from e
    if timeout <= 0 or retries < 1:
        raise HskError(f"--timeout must be > 0 and --retries >= 1, got {timeout} and {retries}")
    return timeout, retries


def bound_remote_calls(url: str) -> None:
    """Apply `remote_settings` to every S3 filesystem made from now on (through fsspec's
    config, which zarr's stores read too); call it before the first call to `url`'s store.
    A local path costs nothing."""
    if "://" not in str(url) or str(url).startswith(("file://", "memory://")):
        return
    timeout, retries = remote_settings()
    import fsspec.config  # lazy: --help never needs it

    kwargs = fsspec.config.conf.setdefault("s3", {}).setdefault("config_kwargs", {})
    # botocore tries once; s3fs retries timeouts and dropped connections with its own backoff
    kwargs.update(connect_timeout=timeout, read_timeout=timeout, retries={"total_max_attempts": 1})
    with suppress(ImportError):
        import s3fs

        s3fs.S3FileSystem.retries = retries


# Where a failure that is not this tool's comes from: the object-storage clients and fsspec.
STORAGE_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "fsspec")


def outside_failure(e: BaseException) -> str | None:
    """One line for a failure of the network, the object store or the local disk under a
    command (a missing bucket, refused credentials, no server, a dead one, a full or read-only
    disk), or None for anything else (a bug: its traceback is wanted)."""
    if type(e).__module__.split(".")[0] in STORAGE_MODULES or isinstance(
        e, ConnectionError | TimeoutError
    ):
        return (
            f"object storage failed ({short_error(e)}); check the URL, the credentials and that "
            "the server answers (each call is bounded by --timeout and --retries)"
        )
    if isinstance(e, OSError):  # local, or an object store's answer as s3fs translates it
        where = f"{e.filename}: " if e.filename else ""
        fix = {
            FileNotFoundError: "check the path or URL (does the folder or bucket exist?)",
            PermissionError: "check its permissions, or the credentials of the object store",
        }.get(type(e), "check the path, its permissions and free space")
        return f"{where}{e.strerror or short_error(e)}; {fix}"
    return None


def short_error(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__
