"""Open a cache and read it chunk by chunk: the API `hsktrain` uses.

A local cache is read straight from its shard files at the offsets each shard index gives
(zarr v3 sharding spec: the index sits at the end, one little-endian (offset, nbytes) uint64
pair per inner chunk, then a crc32c; each inner chunk is the encoded C-order array followed by
its own 4-byte crc32c). A raw chunk (the values, unless `--compressor zstd`) is memory-mapped;
a zstd one (token ids, positions, dims gaps: small) is read, checked against its crc32c and
decompressed. That skips zarr's decode path entirely; the build tests check it against zarr's
own reads. A remote cache (any fsspec URL) is read through a bounded local copy of its shards
(`hskcache.storage.localcache`): each shard is downloaded once, checked against the
manifest's sha256, and then read exactly as a local cache is. Only a cache that is neither
(an unfinished remote build, opened by `verify`) goes through zarr chunk reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import google_crc32c
import numpy as np
import zarr
from numcodecs import Zstd

from hskcache.codec import dim_planes
from hskcache.errors import CacheError, CacheIncompleteError
from hskcache.layout import ArraySpec, layer_key, plan_arrays, shard_key
from hskcache.manifest import FORMAT_VERSION, MANIFEST_KEY, Layer, ManifestView, validate_manifest
from hskcache.rowcheck import chunk_problems
from hskcache.storage.localcache import DEFAULT_SIZE, ShardCache, default_dir, parse_size
from hskcache.storage.objects import read_object
from hskcache.storage.remote import bound_remote_calls

if TYPE_CHECKING:
    from hskcache.targets import Batch

_EMPTY = np.uint64(2**64 - 1)  # index entry of a chunk that was never written
CRC_BYTES = 4


def specs_for(info: ManifestView) -> list[ArraySpec]:
    """The arrays a cache with this manifest must hold."""
    sel, data = info.selection, info.data
    per_token = info.width_dims is None and sel.width_kept < info.teacher.hidden_size
    return plan_arrays(
        info.max_length,
        data.num_logits,
        data.regression,
        [la.teacher for la in info.layers],
        sel.tokens_kept,
        sel.width_kept,
        info.storage.value_dtype,
        per_token,
        info.storage.ids_dtype,
        dim_planes(info.teacher.hidden_size),
    )


def _local_root(url: str) -> Path | None:
    if url.startswith("file://"):
        url = url[len("file://") :]
    return Path(url) if "://" not in url else None


@dataclass
class Cache:
    """An open cache. Chunk i of every array holds examples [i*chunk_rows, (i+1)*chunk_rows)."""

    url: str
    group: zarr.Group
    manifest: dict
    local: ShardCache | None = None  # the local copy a remote cache is read through

    @property
    def remote_fetches(self) -> int:
        """Objects this process downloaded from the remote cache (0 for a local cache)."""
        return 0 if self.local is None else self.local.remote_fetches

    @cached_property
    def info(self) -> ManifestView:
        """The manifest as typed, read-only attributes (`manifest` stays the JSON dict)."""
        return ManifestView.from_dict(self.manifest)

    @property
    def num_examples(self) -> int:
        return self.info.counts.num_examples

    @property
    def chunk_rows(self) -> int:
        return self.info.storage.chunk_rows

    @property
    def num_chunks(self) -> int:
        return self.info.counts.num_chunks

    @property
    def layers(self) -> tuple[Layer, ...]:
        return self.info.layers

    @cached_property
    def specs(self) -> dict[str, ArraySpec]:
        return {s.name: s for s in specs_for(self.info)}

    @cached_property
    def direct(self) -> bool:
        """True when chunks are read straight from shard files (local or local copy)."""
        return _local_root(self.url) is not None or self.local is not None

    @cached_property
    def memory_mapped(self) -> bool:
        """True when the values are memory-mapped from the shard files (read directly, raw)."""
        return self.direct and self.info.storage.compressor == "none"

    def chunk_bounds(self, i: int) -> tuple[int, int]:
        lo = i * self.chunk_rows
        return lo, min(self.num_examples, lo + self.chunk_rows)

    def read_chunk(
        self, i: int, fields: list[str] | None = None, check: bool = True, copy: bool = True
    ) -> dict[str, np.ndarray]:
        """Every (or the named) array's rows of chunk i, as fresh numpy arrays.

        `check`: refuse values no build writes (an id past the vocabulary, a position outside
        its row), so a damaged cache read unverified fails here, naming array and chunk.
        `copy=False`: read-only arrays instead, a raw chunk a view of its memory map (unmapped
        when the array goes), for a caller that copies what it keeps anyway (the loader's
        buffer, `read`'s join): a pass over every byte saved.

        Raises:
            CacheError: the first impossible value's array and chunk.
        """
        rows = self._read_chunk(i, fields, copy)
        problems = chunk_problems(self.manifest, rows) if check else []
        if problems:
            raise CacheError(
                f"{self.url}: {problems[0].replace(':', f' chunk {i}:', 1)} (damaged); run "
                f"`hskcache verify {self.url}`"
            )
        return rows

    def _read_chunk(self, i: int, fields: list[str] | None, copy: bool) -> dict[str, np.ndarray]:
        if not 0 <= i < self.num_chunks:
            raise IndexError(f"chunk {i} out of range 0..{self.num_chunks - 1}")
        lo, hi = self.chunk_bounds(i)
        names = fields or list(self.specs)
        if self.local is not None:
            for _ in range(8):  # another process evicted a shard after our check: again
                try:
                    return self._read_local_copy(names, i, copy)
                except FileNotFoundError:
                    continue
            return self._read_local_copy(names, i, copy)
        if self.direct:
            root = self._root
            return {n: _kept(self._direct_chunk(n, i, root)[: hi - lo], copy) for n in names}
        return {n: self.group[n][lo:hi] for n in names}

    def _read_local_copy(self, names: list[str], i: int, copy: bool) -> dict[str, np.ndarray]:
        """Chunk i of a remote cache, from local copies of its shards (downloaded if absent)."""
        lo, hi = self.chunk_bounds(i)
        shard = i // (self.info.storage.shard_rows // self.chunk_rows)
        keep: set[Path] = set()  # this read's shards: never evicted to make room for another
        for n in names:
            keep.add(self.local.path(shard_key(self.specs[n], shard), keep))
        local = self.local.dir
        return {n: _kept(self._direct_chunk(n, i, local)[: hi - lo], copy) for n in names}

    def read(self, lo: int, hi: int, fields: list[str] | None = None) -> dict[str, np.ndarray]:
        """Rows [lo, hi) of every (or the named) array, assembled from whole chunks."""
        first, last = lo // self.chunk_rows, (max(hi, lo + 1) - 1) // self.chunk_rows
        parts = [self.read_chunk(i, fields, copy=False) for i in range(first, last + 1)]
        off = first * self.chunk_rows
        return {k: np.concatenate([p[k] for p in parts])[lo - off : hi - off] for k in parts[0]}

    def targets(self, lo: int, hi: int) -> Batch:
        """Rows [lo, hi) decoded, as CPU tensors: token inputs trimmed to the longest row,
        labels, the teacher's logits and every stored layer's HSK targets (positions, float32
        values, kept dims), exactly what `hsktrain fit` trains on. No store key or codec in
        the caller's hands."""
        from hskcache.targets import decode_rows  # torch, imported only when asked for

        return decode_rows(self.manifest, self.read(lo, hi))

    def layer_fields(self, teacher_hidden: int) -> dict[str, str]:
        """Array names of one distilled layer: positions, values (+ scales, dims, dims_hi)."""
        key = layer_key(teacher_hidden)
        return {
            f: f"{key}/{f}"
            for f in ("positions", "values", "scales", "dims", "dims_hi")
            if f"{key}/{f}" in self.specs
        }

    # --- direct path: shard files read at their index's offsets --------------------------

    @cached_property
    def _indexes(self) -> dict[str, np.ndarray]:
        return {}  # shard file -> its (chunks, 2) index; 16 bytes a chunk

    @cached_property
    def _root(self) -> Path | None:
        return _local_root(self.url)  # parsed once: pathlib costs ~0.4 ms a read otherwise

    @cached_property
    def _zstd(self) -> Zstd:
        return Zstd()  # one per cache: building one costs more than decoding a small chunk

    def _direct_chunk(self, name: str, i: int, root: Path) -> np.ndarray:
        """One chunk: a raw one mapped for just this read and unmapped after the caller's copy,
        a zstd one read whole, checked against its crc32c and decompressed.

        A mapping kept open would count every page ever touched in the process's RSS, so a
        pass over a 10x larger cache would hold 10x the memory; per-read maps keep it flat.

        Raises:
            CacheError: a missing shard, a chunk of the wrong size or checksum.
        """
        spec = self.specs[name]
        per_shard = self.info.storage.shard_rows // self.chunk_rows
        shard, inner = divmod(i, per_shard)
        path = root / shard_key(spec, shard)
        index = self._indexes.get(str(path))
        if index is None:
            if not path.is_file() and self.local is None:
                raise CacheError(f"{path}: shard file missing; run `hskcache verify`")
            size = path.stat().st_size
            n = 16 * per_shard + CRC_BYTES
            with path.open("rb") as f:
                f.seek(size - n)
                index = np.frombuffer(f.read(n)[:-CRC_BYTES], dtype="<u8").reshape(-1, 2)
            self._indexes[str(path)] = index
        offset, nbytes = index[inner]
        shape = (self.chunk_rows, *spec.row_shape)
        want = int(np.prod(shape)) * np.dtype(spec.dtype).itemsize
        dtype = np.dtype(spec.dtype).newbyteorder("<")
        if spec.compressed or self.info.storage.compressor == "zstd":
            if offset == _EMPTY:
                raise CacheError(f"{path}: chunk {inner} is missing; run `hskcache verify`")
            with path.open("rb") as f:
                f.seek(int(offset))
                data = f.read(int(nbytes))
            crc = np.uint32(google_crc32c.value(data[:-CRC_BYTES])).tobytes()
            raw = self._zstd.decode(data[:-CRC_BYTES]) if crc == data[-CRC_BYTES:] else b""
            if len(raw) != want:
                raise CacheError(
                    f"{path}: chunk {inner} fails its checksum or decodes to {len(raw)} bytes, "
                    f"expected {want}; run `hskcache verify`"
                )
            return np.frombuffer(raw, dtype=dtype).reshape(shape)
        if offset == _EMPTY or int(nbytes) != want + CRC_BYTES:
            raise CacheError(
                f"{path}: chunk {inner} has {int(nbytes)} bytes, expected "
                f"{want + CRC_BYTES}; run `hskcache verify`"
            )
        return np.memmap(path, dtype=dtype, mode="r", offset=int(offset), shape=shape)


def _kept(chunk: np.ndarray, copy: bool) -> np.ndarray:
    """A chunk as read (`copy=False`) or as a fresh array of its own."""
    return np.array(chunk) if copy else chunk


def open_cache(
    url: str | Path,
    require_complete: bool = True,
    local_cache: str | Path | None = None,
    local_cache_size: int | str | None = None,
) -> Cache:
    """Open a cache by local path or fsspec URL and check its manifest.

    A complete remote cache is read through a local copy of its shards.

    Args:
        local_cache: folder of that copy (default `$HSKCACHE_LOCAL_CACHE` or
            `~/.cache/hskcache`); created on the first download. Ignored for local caches.
        local_cache_size: bytes (or "10GB", "10GiB") the folder may hold; default 10 GiB.

    Raises:
        CacheError: nothing there, not a cache, or a manifest that breaks the schema.
        CacheIncompleteError: the build never finished (when `require_complete`).
    """
    url = str(url)
    bound_remote_calls(url)
    root = _local_root(url)
    if root is not None and not (root / "zarr.json").is_file():
        raise CacheError(f"{url}: no cache here (no zarr.json); build one with `hskcache build`")
    try:
        group = zarr.open_group(url, mode="r")
        manifest = group.attrs[MANIFEST_KEY]
    except KeyError as e:
        raise CacheError(f"{url}: a zarr group but not an hskcache cache (no manifest)") from e
    except (OSError, ValueError) as e:
        raise CacheError(f"{url}: cannot open as a zarr group ({e})") from e
    check_format_version(manifest, url)
    validate_manifest(manifest, url)
    cache = Cache(url, group, manifest)
    info = cache.info  # built only now, so the view never sees a manifest that broke the schema
    if require_complete and not info.complete:
        raise CacheIncompleteError(
            f"{url}: cache is incomplete (status '{info.status}'); rerun the same "
            "`hskcache build` command to finish it"
        )
    size = DEFAULT_SIZE if local_cache_size is None else parse_size(local_cache_size)
    if root is None and info.complete and info.objects:
        cache.local = ShardCache(
            Path(local_cache).expanduser() if local_cache else default_dir(),
            size,
            info.name,
            manifest["objects"],
            lambda key: read_object(group.store, key),
        )
    return cache


def check_format_version(manifest: dict, url: str) -> None:
    """Refuse a cache of another format version before its manifest is read any further.

    Raises:
        CacheError: naming both versions and how to get a readable cache.
    """
    found = manifest.get("format_version") if isinstance(manifest, dict) else None
    if found != FORMAT_VERSION:
        tool = manifest.get("tool_version", "?") if isinstance(manifest, dict) else "?"
        raise CacheError(
            f"{url}: cache format version {found} (written by hskcache {tool}); this hskcache "
            f"reads format {FORMAT_VERSION}: rebuild it by rerunning its `hskcache build` "
            "command with --overwrite"
        )
