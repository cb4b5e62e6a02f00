"""The cache a push or pull copies from: opened once, its root bytes kept as read (they are
written last, unchanged), its manifest checked against its own identity, and, for a local
source, every object hashed against the manifest's table before anything is copied.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from hskcache.errors import CacheError, HskError
from hskcache.manifest import MANIFEST_KEY, ManifestView, compute_identity
from hskcache.reader import open_cache
from hskcache.storage.location import Location, digest, locate, object_blocks
from hskcache.storage.objects import ROOT_KEY
from hskcache.storage.remote import short_error


@dataclass
class Source:
    loc: Location
    root_bytes: bytes
    manifest: dict
    info: ManifestView  # the same manifest, typed
    md5: dict[str, str] = field(default_factory=dict)  # local sources only: for ETag checks

    @property
    def table(self) -> dict[str, dict]:
        """The objects table as JSON records: compared as-is with a destination's."""
        return self.manifest["objects"]


def mismatch(where: str, key: str, want: dict, sha: str, n: int) -> str | None:
    """Why an object of `n` bytes hashing to `sha` is not the one the table records (`want`),
    or None when it is."""
    if n != want["bytes"]:
        return f"{where}: object '{key}' has {n} bytes, the manifest records {want['bytes']}"
    if sha != want["sha256"]:
        return (
            f"{where}: object '{key}' does not match its recorded sha256 (altered, or swapped "
            "with another)"
        )
    return None


def manifest_in(root_bytes: bytes | None) -> dict | None:
    """The manifest a root `zarr.json`'s bytes hold; None for no bytes, or bytes that are not a
    root document with a manifest (a half-written or foreign one)."""
    if root_bytes is None:
        return None
    try:
        m = json.loads(root_bytes)["attributes"][MANIFEST_KEY]
    except (ValueError, KeyError, TypeError):
        return None
    return m if isinstance(m, dict) else None


def open_source(url: str) -> Source:
    """A complete cache to copy from, with the exact root bytes that will be written last.

    Raises:
        CacheError: no cache, an incomplete one, or a manifest that fails its own identity.
    """
    loc = locate(url)
    try:
        root_bytes = loc.fs.cat_file(loc.path(ROOT_KEY))
    except FileNotFoundError:
        root_bytes = None
    except Exception as e:
        raise HskError(f"{url}: cannot read ({short_error(e)})") from e
    cache = open_cache(url)  # refuses no cache, another format, a bad manifest, incomplete
    manifest = manifest_in(root_bytes)
    if manifest != cache.manifest:
        raise CacheError(f"{url}: the cache changed while being opened; retry")
    if compute_identity(manifest) != cache.info.identity:
        raise CacheError(
            f"{url}: manifest identity does not match its teacher/data/selection fields; run "
            "`hskcache verify` on it"
        )
    return Source(loc, root_bytes, manifest, cache.info)


def check_local_source(src: Source) -> None:
    """Hash every object of a local source against the table (and keep each MD5 for the ETag
    checks); a remote source is checked object by object as it downloads instead.

    Raises:
        CacheError: naming the first object that is missing or does not match.
    """
    loc = src.loc
    if not loc.local:
        return
    with ThreadPoolExecutor(4) as pool:
        jobs = {k: pool.submit(digest, object_blocks(loc.fs, loc.path(k), 0)) for k in src.table}
    for key, job in jobs.items():
        try:
            sha, md5, n = job.result()
        except FileNotFoundError:
            raise CacheError(
                f"{loc.url}: object '{key}' is missing; run `hskcache verify` on it"
            ) from None
        problem = mismatch(loc.url, key, src.table[key], sha, n)
        if problem:
            raise CacheError(f"{problem}; run `hskcache verify` on it, rebuild it if damaged")
        src.md5[key] = md5
