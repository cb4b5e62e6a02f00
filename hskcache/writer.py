"""Create, resume and finish a cache store, on local disk or any fsspec URL (s3://, ...).

Crash safety rests on two facts: every key is written whole or not at all (zarr's LocalStore
writes through a temp file and a rename; an object store's PUT is atomic), so a shard is either
whole or absent; and a build writes each shard whole, with values that depend only on the
shard's rows. A killed build leaves some shards (and, on local disk, maybe `*.partial` temp
files); the rerun deletes the temp files, skips shards present in every array, recomputes the
rest, and so ends byte-identical to a build that was never interrupted. The manifest's status
turns `complete` last, in one atomic rewrite of the group's `zarr.json`.
"""

from __future__ import annotations

import errno
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

import fsspec
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec
from zarr.core.sync import sync

from hskcache.errors import CacheError, HskError
from hskcache.layout import ArraySpec, shard_key
from hskcache.manifest import (
    FORMAT_VERSION,
    MANIFEST_KEY,
    PROVENANCE_NAMES,
    check_same,
    validate_manifest,
)
from hskcache.storage.lock import LOCK_KEY, BuildLock, local_path
from hskcache.storage.objects import data_keys, object_table

RESUME_HINT = (
    "this --out holds a cache built with other settings; pass --overwrite to replace "
    "it or choose another --out"
)


def open_for_build(
    url: str,
    manifest: dict,
    specs: list[ArraySpec],
    chunk_rows: int,
    shard_rows: int,
    overwrite: bool,
) -> zarr.Group | None:
    """Open `url` to write `manifest`'s cache: create it, or resume a matching partial one.

    The caller holds the cache's lock; its object is never counted as content nor deleted.

    Returns:
        The group, or None when a complete cache with the same settings is already there.

    Raises:
        CacheMismatchError: an existing cache was built with different settings.
        CacheError: `url` holds something that is not a cache.
    """
    validate_manifest(manifest, url)
    content = _content(url)
    found = _existing_manifest(url) if content else None
    if content and found is None:  # never resume into, or delete, what we did not write
        if "zarr.json" in _listing(url):
            raise CacheError(
                f"{url}: its zarr.json holds no readable hskcache manifest (edited or damaged); "
                "--overwrite only replaces what it can tell is a cache: remove the folder "
                "yourself or choose another --out"
            )
        raise CacheError(
            f"{url}: exists and is not an hskcache cache (--overwrite only replaces "
            "caches); choose another --out"
        )
    if content and not overwrite:
        _check_found(url, found)
    if content and overwrite:
        _delete(url)
        content = []
    root = local_path(url)
    if content:
        check_same(
            manifest,
            found,
            ignore=("status", "stats", "identity", "objects", *PROVENANCE_NAMES),
            hint=RESUME_HINT,
        )
        if found["status"] == "complete":
            _check_sizes(url, found["objects"])
            return None
        if root is not None:
            for tmp in root.rglob("*.partial"):  # leftovers of local writes cut short by a kill
                tmp.unlink()
        group = zarr.open_group(_zarr_url(url), mode="r+")
    else:  # mode "a" creates the group without clearing the folder (which holds the lock)
        group = zarr.open_group(_zarr_url(url), mode="a", attributes={MANIFEST_KEY: manifest})
    zstd_all = manifest["storage"]["compressor"] == "zstd"
    n = manifest["counts"]["num_examples"]
    present = stored_keys(group)
    for spec in specs:
        if f"{spec.name}/zarr.json" in present:
            continue
        group.create_array(
            spec.name,
            shape=(n, *spec.row_shape),
            dtype=spec.dtype,
            chunks=(chunk_rows, *spec.row_shape),
            shards=(shard_rows, *spec.row_shape),
            compressors=[*_zstd(zstd_all or spec.compressed), Crc32cCodec()],
            fill_value=0,
        )
    return group


def _zstd(on: bool) -> list[ZstdCodec]:
    """zstd level 3: on the small integer arrays (ids, dims gaps) levels up to 19 saved under
    3% more on real SST-2 data, at many times the write time."""
    return [ZstdCodec(level=3)] if on else []


# Shards of all-zero rows (segment ids of single sentences) must still be written: resume reads
# "key present" as "shard done". The setting is per handle, not stored, so every write uses it.
WRITE_ALL = {"write_empty_chunks": True}


def _zarr_url(url: str) -> str:
    root = local_path(url)
    return str(root) if root is not None else url


def _content(url: str) -> list[str]:
    """What is stored under `url` besides the lock: local top-level entries, or object keys."""
    root = local_path(url)
    if root is not None:
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if p.name != LOCK_KEY)
    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    if not fs.exists(path):
        return []
    lock = f"{path.rstrip('/')}/{LOCK_KEY}"
    return sorted(k for k in fs.find(path) if k != lock)


def _check_found(url: str, found: object) -> None:
    """Refuse, deleting nothing, a manifest that was edited or damaged (it no longer matches
    the schema), before any of its fields is compared or trusted.

    Raises:
        CacheError: one line saying how to rebuild.
    """
    if isinstance(found, dict) and found.get("format_version") != FORMAT_VERSION:
        return  # another format: refused by the comparison, which names both versions
    try:
        if not isinstance(found, dict):
            raise CacheError(f"{url}: it is a {type(found).__name__}, not an object")
        validate_manifest(found, url)
    except CacheError as e:
        raise CacheError(
            f"{url}: its manifest (zarr.json) was edited or is damaged "
            f"({str(e).removeprefix(f'{url}: ')}); "
            "pass --overwrite to rebuild the cache (only its own objects are deleted) or "
            "choose another --out"
        ) from e


def _listing(url: str) -> dict[str, int]:
    """Every stored key under `url` (relative, '/'-separated) with its size in bytes: one
    listing, also on object storage. Local symlinks are listed, never followed."""
    root = local_path(url)
    if root is not None:
        found = {}
        for folder, dirs, names in os.walk(root):
            rel = Path(folder).relative_to(root)
            for name in names + [d for d in dirs if (Path(folder) / d).is_symlink()]:
                key = (rel / name).as_posix()
                found[key] = (Path(folder) / name).lstat().st_size
        return found
    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    base = path.rstrip("/") + "/"
    info = fs.find(path, detail=True) if fs.exists(path) else {}
    return {k[len(base) :]: int(v.get("size") or 0) for k, v in info.items() if k.startswith(base)}


def own_keys(keys: Iterable[str]) -> set[str]:
    """The keys a cache owns among `keys`: zarr metadata of the group and its nodes, chunk
    keys of its arrays (`ARRAY/c/<digits>/...`), the `assets/` kit, zarr's `*.partial` temp
    files beside them, and the lock. Anything else is a user's file, never deleted."""
    keys = set(keys)
    nodes = {k.rpartition("/")[0] for k in keys if k.rpartition("/")[2] == "zarr.json"}

    def in_node(folder: str) -> bool:  # the folder and every folder above it hold a zarr.json
        parts = folder.split("/") if folder else []
        return all("/".join(parts[:i]) in nodes for i in range(len(parts) + 1))

    own = {LOCK_KEY} & keys
    for key in keys:
        folder, _, name = key.rpartition("/")
        parts = folder.split("/") if folder else []
        if name.endswith(".partial"):
            stem = name.split(".")[0]  # zarr writes KEY through KEY-without-suffix.UUID.partial
            name = "zarr.json" if stem == "zarr" else stem
        if parts[:1] == ["assets"] or (name == "zarr.json" and in_node(folder)):
            own.add(key)
        elif "c" in parts:
            i = parts.index("c")
            array = "/".join(parts[:i])
            tail = [*parts[i + 1 :], name]
            if array in nodes and in_node(array) and all(p.isdigit() for p in tail):
                own.add(key)
    return own


def _delete(url: str) -> None:
    """Delete a cache's own objects for --overwrite, all but the lock (which the caller holds).

    Files that are not the cache's own (a user's notes inside the folder) are kept, and said.
    """
    listing = _listing(url)
    own = own_keys(listing) - {LOCK_KEY}
    kept = sorted(set(listing) - own - {LOCK_KEY})
    root = local_path(url)
    if root is None:
        fs, path = fsspec.core.url_to_fs(url)
        if own:
            fs.rm([f"{path.rstrip('/')}/{k}" for k in sorted(own)])
        fs.invalidate_cache()
    else:
        for key in own:
            (root / key).unlink(missing_ok=True)
        for folder, _, _ in sorted(os.walk(root), key=lambda w: -len(w[0])):
            if Path(folder) != root and not any(Path(folder).iterdir()):
                Path(folder).rmdir()  # emptied by the deletion (never a user's file in it)
    if kept:
        more = f" and {len(kept) - 3} more" if len(kept) > 3 else ""
        print(
            f"hskcache: {url}: --overwrite kept {len(kept)} file(s) that are not the cache's "
            f"own: {', '.join(kept[:3])}{more}",
            file=sys.stderr,
        )


def _check_sizes(url: str, objects: dict[str, dict]) -> None:
    """A complete cache found again: check every recorded object is there with its recorded
    size (one listing, no reads). Bytes are checked by `hskcache verify`.

    Raises:
        CacheError: the first missing or resized object, saying how to verify and rebuild.
    """
    sizes = _listing(url)
    for key, want in sorted(objects.items()):
        got = sizes.get(key)
        if got != want["bytes"]:
            what = "is missing" if got is None else f"has {got} bytes, not {want['bytes']}"
            raise CacheError(
                f"{url}: the cache is complete but object '{key}' {what}; run `hskcache "
                f"verify {url}` to see all damage, then rebuild with --overwrite"
            )


def _existing_manifest(url: str) -> dict | None:
    """The manifest of the cache at `url`, or None when it holds no hskcache cache."""
    try:
        return zarr.open_group(_zarr_url(url), mode="r").attrs[MANIFEST_KEY]
    except (FileNotFoundError, KeyError, ValueError):
        return None


def stored_keys(group: zarr.Group) -> set[str]:
    """Every key in the group's store: one listing, also on object storage (no HEAD per key)."""

    async def collect() -> set[str]:
        return {k async for k in group.store.list()}

    return sync(collect())


def shard_done(present: set[str], specs: list[ArraySpec], shard: int) -> bool:
    """True when every array's shard `shard` is among the stored keys `present`."""
    return all(shard_key(spec, shard) in present for spec in specs)


class ShardWriter:
    """Writes whole shards on a background thread so disk I/O overlaps the teacher's compute.

    The queue holds at most two shards, which bounds memory whatever the cache size.
    """

    def __init__(self, group: zarr.Group, root: str, lock: BuildLock | None = None):
        self.group, self.root, self.lock = group, root, lock
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="hskcache-writer", daemon=True)
        self._thread.start()

    def put(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        self._raise_if_failed()
        self._queue.put((start, arrays))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain so the producer never blocks
            start, arrays = item
            try:
                if self.lock is not None:  # stop at once when another build took the cache
                    self.lock.check()
                for name, data in arrays.items():
                    self.group[name].with_config(WRITE_ALL)[start : start + len(data)] = data
            except BaseException as e:  # surfaced on the producer's thread
                self._error = e

    def _raise_if_failed(self) -> None:
        e = self._error
        if e is None:
            return
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise disk_full(self.root) from e
        raise e


def disk_full(root: str) -> HskError:
    """The one line for a full disk at any moment of a build: what is written stays."""
    return HskError(
        f"{root}: disk full; finished shards are kept, free space and rerun the same command "
        "to resume"
    )


def finish(
    group: zarr.Group,
    manifest: dict,
    specs: list[ArraySpec],
    stats: Callable[[dict[str, dict]], dict] | None = None,
    lock: BuildLock | None = None,
    extra_keys: list[str] | None = None,
) -> None:
    """Record every object's sha256, then mark the cache complete in one atomic rewrite of
    the group metadata.

    Args:
        stats: computes the manifest's `stats` from the objects table (sizes without listing
            the store again, which on object storage costs a request per key).
        lock: re-checked right before the cache is marked complete.
        extra_keys: objects besides the arrays' (the `assets/` training kit) to record too.

    Raises:
        LockHeldError: the lock is no longer ours; nothing is marked complete.
    """
    keys = data_keys(specs, manifest["counts"]["num_shards"]) + sorted(extra_keys or [])
    objects = object_table(group.store, keys)
    manifest = {**manifest, "objects": objects, "status": "complete"}
    if stats is not None:
        manifest["stats"] = stats(objects)
    validate_manifest(manifest, str(group.store))
    if lock is not None:
        lock.check()
    group.attrs.update({MANIFEST_KEY: manifest})
