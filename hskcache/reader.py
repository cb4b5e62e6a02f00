"""Open a cache and read it chunk by chunk: the API `hsktrain` uses.

A local cache without compression is read by memory-mapping each shard file at the offsets its
shard index gives (zarr v3 sharding spec: the index sits at the end, one little-endian
(offset, nbytes) uint64 pair per inner chunk, then a crc32c; each inner chunk is the raw
C-order array followed by its own 4-byte crc32c). That skips zarr's decode path entirely;
`tests/test_reader.py` checks it against zarr's own reads. Compressed or remote caches
(any fsspec URL) go through zarr chunk reads, which check every crc32c.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import zarr

from hskcache.errors import CacheError, CacheIncompleteError
from hskcache.layout import ArraySpec, layer_key, plan_arrays, shard_key
from hskcache.manifest import MANIFEST_KEY, validate_manifest

_EMPTY = np.uint64(2**64 - 1)  # index entry of a chunk that was never written
CRC_BYTES = 4


def specs_for(manifest: dict) -> list[ArraySpec]:
    """The arrays a cache with this manifest must hold."""
    sel, data = manifest["selection"], manifest["data"]
    per_token = (
        manifest["width_dims"] is None and sel["width_kept"] < manifest["teacher"]["hidden_size"]
    )
    num_labels = 1 if data["regression"] else len(data["label_names"] or [0])
    return plan_arrays(
        manifest["max_length"],
        num_labels,
        data["regression"],
        [la["teacher"] for la in manifest["layers"]],
        sel["tokens_kept"],
        sel["width_kept"],
        manifest["storage"]["value_dtype"],
        per_token,
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

    @property
    def num_examples(self) -> int:
        return self.manifest["counts"]["num_examples"]

    @property
    def chunk_rows(self) -> int:
        return self.manifest["storage"]["chunk_rows"]

    @property
    def num_chunks(self) -> int:
        return self.manifest["counts"]["num_chunks"]

    @property
    def layers(self) -> list[dict]:
        return self.manifest["layers"]

    @cached_property
    def specs(self) -> dict[str, ArraySpec]:
        return {s.name: s for s in specs_for(self.manifest)}

    @cached_property
    def memory_mapped(self) -> bool:
        """True when chunks are read straight from mapped shard files."""
        return (
            _local_root(self.url) is not None and self.manifest["storage"]["compressor"] == "none"
        )

    def chunk_bounds(self, i: int) -> tuple[int, int]:
        lo = i * self.chunk_rows
        return lo, min(self.num_examples, lo + self.chunk_rows)

    def read_chunk(self, i: int, fields: list[str] | None = None) -> dict[str, np.ndarray]:
        """Every (or the named) array's rows of chunk i, as fresh numpy arrays."""
        if not 0 <= i < self.num_chunks:
            raise IndexError(f"chunk {i} out of range 0..{self.num_chunks - 1}")
        lo, hi = self.chunk_bounds(i)
        names = fields or list(self.specs)
        if self.memory_mapped:
            return {n: np.array(self._mapped_chunk(n, i)[: hi - lo]) for n in names}
        return {n: self.group[n][lo:hi] for n in names}

    def read(self, lo: int, hi: int, fields: list[str] | None = None) -> dict[str, np.ndarray]:
        """Rows [lo, hi) of every (or the named) array, assembled from whole chunks."""
        first, last = lo // self.chunk_rows, (max(hi, lo + 1) - 1) // self.chunk_rows
        parts = [self.read_chunk(i, fields) for i in range(first, last + 1)]
        off = first * self.chunk_rows
        return {k: np.concatenate([p[k] for p in parts])[lo - off : hi - off] for k in parts[0]}

    def layer_fields(self, teacher_hidden: int) -> dict[str, str]:
        """Array names of one distilled layer: positions, values (+ scales, dims)."""
        key = layer_key(teacher_hidden)
        return {
            f: f"{key}/{f}"
            for f in ("positions", "values", "scales", "dims")
            if f"{key}/{f}" in self.specs
        }

    # --- memory-mapped path --------------------------------------------------------------

    @cached_property
    def _indexes(self) -> dict[str, np.ndarray]:
        return {}  # shard file -> its (chunks, 2) index; 16 bytes a chunk

    def _mapped_chunk(self, name: str, i: int) -> np.ndarray:
        """One chunk, mapped for just this read and unmapped after the caller's copy.

        A mapping kept open would count every page ever touched in the process's RSS, so a
        pass over a 10x larger cache would hold 10x the memory; per-read maps keep it flat.
        """
        spec = self.specs[name]
        per_shard = self.manifest["storage"]["shard_rows"] // self.chunk_rows
        shard, inner = divmod(i, per_shard)
        path = _local_root(self.url) / shard_key(spec, shard)
        index = self._indexes.get(str(path))
        if index is None:
            if not path.is_file():
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
        if offset == _EMPTY or int(nbytes) != want + CRC_BYTES:
            raise CacheError(
                f"{path}: chunk {inner} has {int(nbytes)} bytes, expected "
                f"{want + CRC_BYTES}; run `hskcache verify`"
            )
        dtype = np.dtype(spec.dtype).newbyteorder("<")
        return np.memmap(path, dtype=dtype, mode="r", offset=int(offset), shape=shape)


def open_cache(url: str | Path, require_complete: bool = True) -> Cache:
    """Open a cache by local path or fsspec URL and check its manifest.

    Raises:
        CacheError: nothing there, not a cache, or a manifest that breaks the schema.
        CacheIncompleteError: the build never finished (when `require_complete`).
    """
    url = str(url)
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
    validate_manifest(manifest, url)
    if require_complete and manifest["status"] != "complete":
        raise CacheIncompleteError(
            f"{url}: cache is incomplete (status '{manifest['status']}'); rerun the same "
            "`hskcache build` command to finish it"
        )
    return Cache(url, group, manifest)


def decode_values(manifest: dict, values: np.ndarray, scales: np.ndarray | None) -> np.ndarray:
    """Stored HSK values -> float32, whatever the storage dtype."""
    kind = manifest["storage"]["value_dtype"]
    if kind == "float16":
        return values.astype(np.float32)
    if kind == "bfloat16":  # bf16 bits are the top half of a float32
        return (values.astype(np.uint32) << 16).view(np.float32)
    if scales is None:
        raise CacheError("int8 values need their per-token scales")
    return values.astype(np.float32) * scales[..., None]
