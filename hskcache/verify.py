"""`hskcache verify`: re-check a cache end to end and name every damaged array and chunk.

Checks, in order: the manifest (schema, identity hash, status); every array's presence, shape
and dtype; every shard file's presence; every chunk's crc32c (read through zarr, which checks
both the chunk and the shard-index checksums); and the cross-array invariants a reader relies
on (lengths <= max length, n_valid <= K, selected positions inside each row).
"""

from __future__ import annotations

import numpy as np

from hskcache.errors import CacheError
from hskcache.layout import layer_key, shard_key
from hskcache.manifest import compute_identity
from hskcache.progress import progress_bar
from hskcache.reader import Cache, open_cache, specs_for


def verify_cache(url: str, show_progress: bool = False) -> list[str]:
    """Return one message per problem found; an empty list means the cache is sound.

    Raises:
        CacheError: the cache cannot be opened at all (no group, no valid manifest).
    """
    cache = open_cache(url, require_complete=False)
    m = cache.manifest
    problems = []
    if m["status"] != "complete":
        problems.append(f"status is '{m['status']}': the build never finished; rerun it")
    if compute_identity(m) != m["identity"]:
        problems.append("manifest identity does not match its teacher/data/selection fields")
    specs = specs_for(m)
    n = m["counts"]["num_examples"]
    present = []
    for spec in specs:
        try:
            arr = cache.group[spec.name]
        except KeyError:
            problems.append(f"array '{spec.name}' is missing")
            continue
        want = (n, *spec.row_shape)
        if arr.shape != want or str(arr.dtype) != spec.dtype:
            problems.append(
                f"array '{spec.name}' is {arr.shape} {arr.dtype}, expected {want} {spec.dtype}"
            )
            continue
        present.append(spec)
    store = cache.group.store
    for spec in present:
        for s in range(m["counts"]["num_shards"]):
            if not _exists(store, shard_key(spec, s)):
                problems.append(f"array '{spec.name}' shard {s} is missing")
    problems += _check_chunks(cache, present, show_progress)
    if not problems:
        problems += _check_invariants(cache)
    return problems


def _exists(store, key: str) -> bool:
    """Key presence through the store's API, so local and remote caches are checked alike."""
    from zarr.core.sync import sync

    return sync(store.exists(key))


def _check_chunks(cache: Cache, specs, show_progress: bool) -> list[str]:
    problems = []
    total = len(specs) * cache.num_chunks
    with progress_bar("verify", total, 0, show_progress, unit="chunks") as advance:
        for spec in specs:
            arr = cache.group[spec.name]
            for i in range(cache.num_chunks):
                lo, hi = cache.chunk_bounds(i)
                try:
                    arr[lo:hi]
                except Exception as e:  # zarr raises ValueError/RuntimeError on bad bytes
                    problems.append(f"array '{spec.name}' chunk {i} is damaged ({_short(e)})")
                advance(1)
    return problems


def _check_invariants(cache: Cache) -> list[str]:
    m, problems = cache.manifest, []
    K = m["selection"]["tokens_kept"]
    for i in range(cache.num_chunks):
        fields = ["lengths", "n_valid"] + [
            f"{layer_key(x['teacher'])}/positions" for x in m["layers"]
        ]
        c = cache.read_chunk(i, fields)
        lengths, n_valid = c["lengths"], c["n_valid"].astype(np.int64)
        if (lengths < 1).any() or (lengths > m["max_length"]).any():
            problems.append(f"array 'lengths' chunk {i}: values outside 1..{m['max_length']}")
        if (n_valid < 0).any() or (n_valid > K).any() or (n_valid > lengths).any():
            problems.append(f"array 'n_valid' chunk {i}: values outside 0..min(K, length)")
        slot = np.arange(K)[None, :]
        for f in fields[2:]:
            pos = c[f].astype(np.int64)
            real = slot < n_valid[:, None]
            bad = (real & ((pos < 0) | (pos >= lengths[:, None]))) | (~real & (pos != -1))
            if bad.any():
                problems.append(f"array '{f}' chunk {i}: positions outside their rows")
    return problems


def _short(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:160]


def require_sound(url: str) -> Cache:
    """Open a cache only if `verify_cache` finds nothing wrong (for `fit --verify`)."""
    problems = verify_cache(url)
    if problems:
        raise CacheError(
            f"{url}: {problems[0]}"
            + (
                f" (+{len(problems) - 1} more problems; run `hskcache verify`)"
                if len(problems) > 1
                else ""
            )
        )
    return open_cache(url)
