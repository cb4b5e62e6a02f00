"""A bounded local copy of a remote cache's objects, so training reads object storage once.

A remote cache (s3://, gs://, ...) is read shard by shard: the first read of a shard downloads
the whole object, checks it against the size and sha256 the manifest's `objects` table recorded
at build time, and writes it under `DIR/<cache>/<key>` through a temp file and a rename. From
then on the shard is a local file, read exactly as a local cache is (memory maps, or zarr's
decode for compressed caches), so a second epoch reads nothing remote. A local file is hashed
once per process, on its first use: a copy altered after download is downloaded again.

`<cache>` is the cache's name (`ManifestView.name`: identity plus content digest): the identity
alone names what was distilled, not how it is stored (chunking, dtype, compression), and two
caches with one identity but other bytes must never share files.

The folder is bounded: after each download, whole shards are evicted, least recently used first
(a read touches the file's mtime), until the total is under the limit; the shards of the read in
progress are never evicted. Several processes (DDP ranks, two fits) may share one folder: every
file appears whole through its rename, and a shard evicted by another process between our check
and our read is simply downloaded again. A shard larger than the whole limit is kept while in use.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path

from hskcache.errors import CacheError, ConfigError
from hskcache.names import inside

ENV_DIR = "HSKCACHE_LOCAL_CACHE"
DEFAULT_SIZE = 10 * 2**30  # 10 GiB
# (local file, sha256) pairs this process has hashed: a local copy is checked once per process
_CHECKED: set[tuple[str, str]] = set()
_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def default_dir() -> Path:
    """`$HSKCACHE_LOCAL_CACHE`, else `~/.cache/hskcache`."""
    return Path(os.environ.get(ENV_DIR) or Path.home() / ".cache" / "hskcache").expanduser()


def parse_size(text: str | int) -> int:
    """Bytes from an int or a string such as "500MB", "10GB", "10GiB" (KB/MB/GB/TB are powers
    of 1000, KiB/MiB/GiB/TiB of 1024).

    Raises:
        ConfigError: not a positive size.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?)B?\s*", str(text).upper())
        if m is None or (m.group(3) and not m.group(2)):
            raise ConfigError(
                f"local_cache_size '{text}' is not a size; give bytes or e.g. 500MB, 10GB, 10GiB"
            )
        unit = 2 ** (10 * "KMGT".index(m.group(2)) + 10) if m.group(3) else _UNITS[m.group(2)]
        n = int(float(m.group(1)) * unit)
    if n <= 0:
        raise ConfigError(f"local_cache_size must be positive, got {text}")
    return n


class ShardCache:
    """The local copies of one remote cache's objects, in a folder shared with other caches.

    Args:
        root: the shared folder (DIR); this cache's files go to `root / name`.
        name: the cache's name (`ManifestView.name`).
        limit: bytes all caches' shards in `root` may take together.
        objects: the manifest's objects table (key -> bytes, sha256).
        fetch: reads one object from the remote store (None when absent).
    """

    def __init__(
        self,
        root: Path,
        limit: int,
        name: str,
        objects: dict[str, dict],
        fetch: Callable[[str], bytes | None],
    ):
        self.root, self.limit, self.objects, self._fetch = Path(root), limit, objects, fetch
        self.dir = self.root / name
        self.remote_fetches = 0  # objects downloaded by this process: 0 once the copy is warm

    def path(self, key: str, keep: Iterable[Path] = ()) -> Path:
        """The local file of object `key`, downloaded and checked first if need be.

        `keep`: files of the read in progress, never evicted to make room for this one.

        Raises:
            CacheError: the object is not in the table, is missing remotely, or its bytes do
                not match the recorded sha256 (nothing is written then).
        """
        want = self.objects.get(key)
        if want is None:
            raise CacheError(f"object '{key}' is not in the cache's objects table")
        path = inside(self.dir, key, str(self.dir))
        try:
            if path.stat().st_size == want["bytes"] and self._sound(path, want["sha256"]):
                os.utime(path)  # mtime = last use, for LRU across processes
                return path
        except FileNotFoundError:
            pass
        data = self._fetch(key)
        self.remote_fetches += 1
        if data is None:
            raise CacheError(f"object '{key}' is missing from the remote cache; run verify on it")
        if hashlib.sha256(data).hexdigest() != want["sha256"] or len(data) != want["bytes"]:
            raise CacheError(
                f"object '{key}' downloaded does not match its recorded sha256 (damaged or "
                "replaced remotely); run `hskcache verify` on the remote cache"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # whole or absent, whoever else reads this folder
        _CHECKED.add((str(path), want["sha256"]))
        self.evict(keep={path, *keep})
        return path

    @staticmethod
    def _sound(path: Path, sha256: str) -> bool:
        """True when the local file hashes to `sha256`: checked on its first use in this
        process (a copy altered after download is then downloaded again), trusted after."""
        if (str(path), sha256) in _CHECKED:
            return True
        if hashlib.sha256(path.read_bytes()).hexdigest() != sha256:
            return False
        _CHECKED.add((str(path), sha256))
        return True

    def evict(self, keep: Iterable[Path] = ()) -> None:
        """Delete least recently used shards until the folder's shards fit in the limit."""
        keep = {Path(p) for p in keep}
        shards = []
        for p in self.root.rglob("*"):
            if "c" not in p.relative_to(self.root).parts or p.name.endswith(".tmp"):
                continue  # metadata (zarr.json) is tiny and kept; temp files are in flight
            try:
                st = p.stat()
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            if p.is_file():
                shards.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in shards)
        for _, size, p in sorted(shards, key=lambda x: x[0]):
            if total <= self.limit:
                break
            if p in keep:
                continue
            p.unlink(missing_ok=True)
            total -= size
