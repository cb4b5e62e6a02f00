"""Create, resume and finish a cache store on local disk.

Crash safety rests on two facts: zarr's LocalStore writes every key through a temp file and a
rename, so a shard file is either whole or absent; and a build writes each shard whole, with
values that depend only on the shard's rows. A killed build leaves some shards and maybe
`*.partial` temp files; the rerun deletes the temp files, skips shards present in every array,
recomputes the rest, and so ends byte-identical to a build that was never interrupted. The
manifest's status turns `complete` last, in one atomic rewrite of the group's `zarr.json`.
"""

from __future__ import annotations

import errno
import queue
import shutil
import threading
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from hskcache.errors import CacheError, HskError
from hskcache.layout import ArraySpec, shard_key
from hskcache.manifest import MANIFEST_KEY, check_same, validate_manifest

RESUME_HINT = (
    "this --out holds a cache built with other settings; pass --overwrite to replace "
    "it or choose another --out"
)


def open_for_build(
    root: Path,
    manifest: dict,
    specs: list[ArraySpec],
    chunk_rows: int,
    shard_rows: int,
    overwrite: bool,
) -> zarr.Group | None:
    """Open `root` to write `manifest`'s cache: create it, or resume a matching partial one.

    Returns:
        The group, or None when a complete cache with the same settings is already there.

    Raises:
        CacheMismatchError: an existing cache was built with different settings.
        CacheError: `root` exists and is not a cache.
    """
    validate_manifest(manifest, str(root))
    occupied = root.exists() and any(root.iterdir())
    found = _existing_manifest(root) if occupied else None
    if occupied and found is None:  # never resume into, or delete, what we did not write
        raise CacheError(
            f"{root}: exists and is not an hskcache cache (--overwrite only replaces "
            "caches); choose another --out"
        )
    if root.exists() and overwrite:
        shutil.rmtree(root)
        occupied = False
    if occupied:
        check_same(manifest, found, ignore=("status", "stats", "identity"), hint=RESUME_HINT)
        if found["status"] == "complete":
            return None
        for tmp in root.rglob("*.partial"):  # leftovers of writes cut short by a kill
            tmp.unlink()
        group = zarr.open_group(root, mode="r+")
    else:
        group = zarr.open_group(root, mode="w", attributes={MANIFEST_KEY: manifest})
    compressors = [ZstdCodec(level=3)] if manifest["storage"]["compressor"] == "zstd" else []
    n = manifest["counts"]["num_examples"]
    for spec in specs:
        if (root / spec.name / "zarr.json").exists():
            continue
        group.create_array(
            spec.name,
            shape=(n, *spec.row_shape),
            dtype=spec.dtype,
            chunks=(chunk_rows, *spec.row_shape),
            shards=(shard_rows, *spec.row_shape),
            compressors=[*compressors, Crc32cCodec()],
            fill_value=0,
        )
    return group


# Shards of all-zero rows (segment ids of single sentences) must still be written: resume reads
# "key present" as "shard done". The setting is per handle, not stored, so every write uses it.
WRITE_ALL = {"write_empty_chunks": True}


def _existing_manifest(root: Path) -> dict | None:
    """The manifest of the cache at `root`, or None when `root` holds no hskcache cache."""
    try:
        return zarr.open_group(root, mode="r").attrs[MANIFEST_KEY]
    except (FileNotFoundError, KeyError, ValueError):
        return None


def shard_done(root: Path, specs: list[ArraySpec], shard: int) -> bool:
    return all((root / shard_key(spec, shard)).is_file() for spec in specs)


class ShardWriter:
    """Writes whole shards on a background thread so disk I/O overlaps the teacher's compute.

    The queue holds at most two shards, which bounds memory whatever the cache size.
    """

    def __init__(self, group: zarr.Group, root: Path):
        self.group, self.root = group, root
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
                for name, data in arrays.items():
                    self.group[name].with_config(WRITE_ALL)[start : start + len(data)] = data
            except BaseException as e:  # surfaced on the producer's thread
                self._error = e

    def _raise_if_failed(self) -> None:
        e = self._error
        if e is None:
            return
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise HskError(
                f"{self.root}: disk full; finished shards are kept, free space and rerun the "
                "same command to resume"
            ) from e
        raise e


def finish(group: zarr.Group, manifest: dict) -> None:
    """Mark the cache complete: one atomic rewrite of the group metadata."""
    manifest = {**manifest, "status": "complete"}
    validate_manifest(manifest, str(group.store))
    group.attrs.update({MANIFEST_KEY: manifest})
