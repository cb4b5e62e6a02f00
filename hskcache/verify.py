"""`hskcache verify`: re-check a cache end to end and name every damaged array and chunk.

Checks, in order: the manifest (schema, identity hash, status, counts against each other); every
array's presence, shape and dtype; every object against the size and sha256 the manifest
recorded at build time (catches a missing shard, and a shard swapped with another one, which
still passes its own checksums); every chunk's crc32c (read through zarr, which checks both the
chunk and the shard-index checksums); and the cross-array invariants a reader relies on
(lengths <= max length, n_valid <= K, selected positions inside each row, magnitude dims
ascending inside the teacher's width).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hskcache.errors import CacheError
from hskcache.layout import layer_key
from hskcache.manifest import ManifestView, compute_identity
from hskcache.progress import progress_bar
from hskcache.reader import Cache, open_cache, specs_for
from hskcache.rowcheck import dims_problems
from hskcache.storage.localcache import ShardCache
from hskcache.storage.objects import check_object, data_keys, read_object


def verify_cache(
    url: str,
    show_progress: bool = False,
    local_cache: str | Path | None = None,
    local_cache_size: int | str | None = None,
    through_local_copy: bool = False,
) -> list[str]:
    """Return one message per problem found; an empty list means the cache is sound.

    `through_local_copy` (for `fit`): a complete remote cache is checked through its local copy
    (`local_cache`, as `open_cache` takes it): each object is downloaded once, checked against
    its sha256 on the way in, and the `fit` that follows reads the same local files instead of
    downloading them again. Without it the remote objects themselves are read.

    Raises:
        CacheError: the cache cannot be opened at all (no group, no valid manifest).
    """
    cache = open_cache(url, False, local_cache, local_cache_size)
    local = cache.local if through_local_copy else None
    info = cache.info
    problems = []
    if not info.complete:
        problems.append(f"status is '{info.status}': the build never finished; rerun it")
    if compute_identity(cache.manifest) != info.identity:
        problems.append("manifest identity does not match its teacher/data/selection fields")
    problems += _check_counts(info)
    specs = specs_for(info)
    n = info.counts.num_examples
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
    problems += _check_objects(cache, data_keys(specs, info.counts.num_shards), local)
    problems += _check_chunks(cache, present, show_progress, local)
    if not problems:
        problems += _check_invariants(cache)
    return problems


def _check_counts(info: ManifestView) -> list[str]:
    """Counts that must follow from each other (an edited count would make readers skip rows)."""
    n, c, st = info.counts.num_examples, info.counts, info.storage
    want = {  # count: (found, rows per unit, unit)
        "num_chunks": (c.num_chunks, st.chunk_rows, "chunks"),
        "num_shards": (c.num_shards, st.shard_rows, "shards"),
    }
    problems = [
        f"counts.{k} is {found}, but {n} examples in {rows}-row {unit} make {-(-n // rows)}"
        for k, (found, rows, unit) in want.items()
        if found != -(-n // rows)
    ]
    if info.data.num_examples != n:
        problems.append(f"counts.num_examples is {n}, data.num_examples {info.data.num_examples}")
    if st.shard_rows % st.chunk_rows:
        problems.append(f"storage.shard_rows {st.shard_rows} is not a multiple of chunk_rows")
    return problems


def _check_objects(cache: Cache, expected: list[str], local: ShardCache | None) -> list[str]:
    """Every object against the manifest's table; keys the table lacks are problems too.

    Reads go through the store API, so local and remote caches are checked alike.
    """
    table = cache.manifest["objects"]  # JSON records, as check_object takes them
    store = cache.group.store
    if table is None:  # an unfinished build: only presence can be checked
        return [f"object '{k}' is missing" for k in expected if read_object(store, k) is None]
    problems = [
        f"object '{k}' is not in the manifest's object table" for k in expected if k not in table
    ]
    for key, want in table.items():
        if local is not None:  # downloaded once, sha256-checked on the way in
            try:
                local.path(key)
            except CacheError as e:
                problems.append(str(e))
            continue
        problem = check_object(key, read_object(store, key), want)
        if problem:
            problems.append(problem)
    return problems


def _check_chunks(cache: Cache, specs, show_progress: bool, local: ShardCache | None) -> list[str]:
    problems = []
    total = len(specs) * cache.num_chunks
    with progress_bar("verify", total, 0, show_progress, unit="chunks") as advance:
        for spec in specs:
            arr = cache.group[spec.name]
            for i in range(cache.num_chunks):
                lo, hi = cache.chunk_bounds(i)
                try:
                    if local is None:
                        arr[lo:hi]
                    else:  # from the local copy, never a second download
                        cache.read_chunk(i, [spec.name], check=False)
                except Exception as e:  # zarr raises ValueError/RuntimeError on bad bytes
                    problems.append(f"array '{spec.name}' chunk {i} is damaged ({_short(e)})")
                advance(1)
    return problems


def _check_invariants(cache: Cache) -> list[str]:
    info, problems = cache.info, []
    K, hidden = info.selection.tokens_kept, info.teacher.hidden_size
    for i in range(cache.num_chunks):
        fields = ["lengths", "n_valid"] + [f"{layer_key(x.teacher)}/positions" for x in info.layers]
        dims = [n for n in cache.specs if n.endswith(("/dims", "/dims_hi"))]
        c = cache.read_chunk(i, fields + dims, check=False)  # every problem listed, not the first
        lengths, n_valid = c["lengths"], c["n_valid"].astype(np.int64)
        if (lengths < 1).any() or (lengths > info.max_length).any():
            problems.append(f"array 'lengths' chunk {i}: values outside 1..{info.max_length}")
        if (n_valid < 0).any() or (n_valid > K).any() or (n_valid > lengths).any():
            problems.append(f"array 'n_valid' chunk {i}: values outside 0..min(K, length)")
        slot = np.arange(K)[None, :]
        problems += [p.replace(":", f" chunk {i}:", 1) for p in dims_problems(c, hidden)]
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


def require_sound(
    url: str, local_cache: str | Path | None = None, local_cache_size: int | str | None = None
) -> Cache:
    """Open a cache only if `verify_cache` finds nothing wrong (for `fit --verify`); a remote
    one is checked through the local copy `fit` then reads."""
    problems = verify_cache(url, False, local_cache, local_cache_size, through_local_copy=True)
    if problems:
        raise CacheError(
            f"{url}: {problems[0]}"
            + (
                f" (+{len(problems) - 1} more problems; run `hskcache verify`)"
                if len(problems) > 1
                else ""
            )
        )
    return open_cache(url, True, local_cache, local_cache_size)
