"""The objects a cache is made of, and the sha256 of each, recorded in the manifest at finish.

A cache is a set of store keys: the group's `zarr.json` (which holds the manifest), every
array's and nested group's `zarr.json`, and every shard file. The manifest's `objects` table
names every key but the root one with its size and sha256. It is what makes a cache checkable
and movable as plain objects: `verify` catches a shard swapped for another shard of the same
shape (each still passes its own crc32c), and a copy to or from object storage checks every
object it moves against the table, then writes the root `zarr.json` last.

Keys are read through the zarr store API, so the same code serves local folders and fsspec
URLs (s3://, memory://, ...).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from hskcache.errors import CacheError
from hskcache.layout import ArraySpec, shard_key

ROOT_KEY = "zarr.json"  # holds the manifest: written last, never in the table


def data_keys(specs: Iterable[ArraySpec], num_shards: int) -> list[str]:
    """Every key of the arrays' data and metadata, nested groups' metadata included."""
    keys: set[str] = set()
    for spec in specs:
        parts = spec.name.split("/")
        keys |= {"/".join(parts[:i] + ["zarr.json"]) for i in range(1, len(parts) + 1)}
        keys |= {shard_key(spec, s) for s in range(num_shards)}
    return sorted(keys)


def read_object(store: Store, key: str) -> bytes | None:
    """The bytes under `key`, or None when it is absent."""
    buf = sync(store.get(key, prototype=default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def describe_object(data: bytes) -> dict:
    """The table entry of one object."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def object_table(store: Store, keys: Iterable[str]) -> dict[str, dict]:
    """{key: {"bytes", "sha256"}} for every key, read from the store.

    Raises:
        CacheError: a key is absent (a build must write every shard before it finishes).
    """
    table = {}
    for key in keys:
        data = read_object(store, key)
        if data is None:
            raise CacheError(f"{store}: object '{key}' is missing; rerun the build to finish it")
        table[key] = describe_object(data)
    return table


def check_object(key: str, data: bytes | None, want: dict) -> str | None:
    """A problem message when `data` is not the object the table recorded, else None."""
    if data is None:
        return f"object '{key}' is missing"
    if len(data) != want["bytes"]:
        return f"object '{key}' has {len(data)} bytes, the manifest records {want['bytes']}"
    if hashlib.sha256(data).hexdigest() != want["sha256"]:
        return (
            f"object '{key}' does not match its recorded sha256 (altered, or swapped with another)"
        )
    return None
