"""`hskcache verify`: re-check a cache end to end and name every damaged array and chunk.

Checks, in order: the manifest (schema, identity hash, status, counts against each other); every
array's presence, shape and dtype; every object against the size and sha256 the manifest
recorded at build time (catches a missing shard, and a shard swapped with another one, which
still passes its own checksums); every chunk's crc32c (read through zarr, which checks both the
chunk and the shard-index checksums); and the cross-array invariants a reader relies on
(lengths <= max length, n_valid <= K, selected positions inside each row).
"""

from __future__ import annotations

import numpy as np

from hskcache.errors import CacheError
from hskcache.layout import layer_key
from hskcache.manifest import compute_identity
from hskcache.objects import check_object, data_keys, read_object
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
    problems += _check_counts(m)
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
    problems += _check_objects(cache, data_keys(specs, m["counts"]["num_shards"]))
    problems += _check_chunks(cache, present, show_progress)
    if not problems:
        problems += _check_invariants(cache)
    return problems


def _check_counts(m: dict) -> list[str]:
    """Counts that must follow from each other (an edited count would make readers skip rows)."""
    n, c, st = m["counts"]["num_examples"], m["counts"], m["storage"]
    want = {  # count: (rows per unit, unit)
        "num_chunks": (st["chunk_rows"], "chunks"),
        "num_shards": (st["shard_rows"], "shards"),
    }
    problems = [
        f"counts.{k} is {c[k]}, but {n} examples in {rows}-row {unit} make {-(-n // rows)}"
        for k, (rows, unit) in want.items()
        if c[k] != -(-n // rows)
    ]
    if m["data"]["num_examples"] != n:
        problems.append(
            f"counts.num_examples is {n}, data.num_examples {m['data']['num_examples']}"
        )
    if st["shard_rows"] % st["chunk_rows"]:
        problems.append(f"storage.shard_rows {st['shard_rows']} is not a multiple of chunk_rows")
    return problems


def _check_objects(cache: Cache, expected: list[str]) -> list[str]:
    """Every object against the manifest's table; keys the table lacks are problems too.

    Reads go through the store API, so local and remote caches are checked alike.
    """
    table = cache.manifest["objects"]
    store = cache.group.store
    if table is None:  # an unfinished build: only presence can be checked
        return [f"object '{k}' is missing" for k in expected if read_object(store, k) is None]
    problems = [
        f"object '{k}' is not in the manifest's object table" for k in expected if k not in table
    ]
    for key, want in table.items():
        problem = check_object(key, read_object(store, key), want)
        if problem:
            problems.append(problem)
    return problems


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
