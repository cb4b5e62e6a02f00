"""Where a cache lives: a local folder or any fsspec URL (`Location`, `locate`), and how its
objects are read and hashed (streamed in blocks, sha256 + md5 in one pass). Used by `push` /
`pull` (transfer.py) and `ls` (catalog.py).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from hskcache.errors import HskError
from hskcache.names import check_key, inside

BLOCK = 8 * 2**20  # streaming read size: bounded memory whatever the object's size
# Objects up to this size move in one request from memory (shards are ~16 MiB by default); larger
# ones (a bundled teacher) stream through a file. s3fs uploads anything under 100 MiB in one
# PutObject, so these get an ETag that is their MD5.
INLINE_BYTES = 32 * 2**20


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
    kwargs = fsspec.config.conf.setdefault("s3", {}).setdefault("config_kwargs", {})
    # botocore tries once; s3fs retries timeouts and dropped connections with its own backoff
    kwargs.update(connect_timeout=timeout, read_timeout=timeout, retries={"total_max_attempts": 1})
    with suppress(ImportError):
        import s3fs

        s3fs.S3FileSystem.retries = retries


@dataclass
class Location:
    """A cache's place: the user's URL, its filesystem and the root path inside it."""

    url: str
    fs: AbstractFileSystem
    root: str

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, key: str) -> str:
        """The full path of `key`, refused unless it stays inside the root (a key may come
        from a received manifest).

        Raises:
            UnsafeNameError: the key is absolute, has a `..` component, or (local) resolves
                outside the root through a symlink.
        """
        if self.local:
            return str(inside(Path(self.root), key, self.url))
        return f"{self.root.rstrip('/')}/{check_key(key, self.url)}"

    def child(self, name: str) -> Location:
        return Location(f"{self.url.rstrip('/')}/{name}", self.fs, self.path(name))

    def listing(self) -> dict[str, dict]:
        """{key relative to the root: fsspec info} for every object under the root."""
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as e:  # a missing bucket, refused credentials, no server
            raise HskError(f"{self.url}: cannot list ({short_error(e)})") from e
        prefix = self.root.rstrip("/") + "/"
        return {p[len(prefix) :]: info for p, info in found.items() if p.startswith(prefix)}


def locate(url: str) -> Location:
    """The filesystem behind a local path or fsspec URL, with fresh (uncached) listings.

    Raises:
        HskError: the URL's protocol is unknown, or needs a package that is not installed.
    """
    bound_remote_calls(url)
    try:
        fs, root = fsspec.url_to_fs(url, skip_instance_cache=True)
    except ImportError as e:
        protocol = url.split("://", 1)[0]
        raise HskError(
            f"{url}: the '{protocol}' protocol needs a package that is not installed ({e}); "
            "install it (`pip install 'hskcache[s3]'` for s3://)"
        ) from e
    except ValueError as e:
        raise HskError(
            f"{url}: unknown storage protocol ({e}); give a local path or an fsspec URL "
            "(s3://, gs://, file://, memory://)"
        ) from e
    return Location(url, fs, root)


def digest(blocks: Iterator[bytes], advance: Callable[[int], None] = lambda n: None):
    """(sha256 hex, md5 hex, bytes) of a stream, passing each block on to `advance`."""
    sha, md5, n = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    for block in blocks:
        sha.update(block)
        md5.update(block)
        n += len(block)
        advance(len(block))
    return sha.hexdigest(), md5.hexdigest(), n


def object_blocks(fs: AbstractFileSystem, path: str, size: int) -> Iterator[bytes]:
    """The bytes of one object: one request when small or local-cheap, else streamed."""
    if size <= INLINE_BYTES and not isinstance(fs, LocalFileSystem):
        yield fs.cat_file(path)
        return
    with fs.open(path, "rb", block_size=BLOCK) as f:
        while block := f.read(BLOCK):
            yield block


def store_md5(info: dict) -> str | None:
    """The MD5 a store reports for an object, when it reports one (S3 single-part ETag)."""
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"').lower()
    if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
        return etag
    return None


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
