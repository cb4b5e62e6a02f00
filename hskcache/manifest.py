"""The cache manifest: a JSON document in the group attributes, checked against the schema.

`schemas/cache.schema.json` documents every field; this module validates, hashes and compares.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import resources

from hskcache.errors import CacheError, CacheMismatchError

MANIFEST_KEY = "hskcache"
# 2: the manifest records every object's sha256 (`objects`).
# 3: the cache carries its training kit (`assets`: tokenizer, teacher config, student inits).
FORMAT_VERSION = 3
# The schema ships inside the package (a wheel has no top-level schemas/ folder); it is a copy of
# schemas/cache.schema.json, kept byte-identical by tests/test_wheel.py.
SCHEMA_RESOURCE = "cache.schema.json"
# Fields that make up what the knowledge *is*; storage and build settings only say how it is kept.
IDENTITY_FIELDS = (
    "teacher.weights_sha256",
    "tokenizer.sha256",
    "data.fingerprint",
    "selection",
    "max_length",
    "assets.students",  # each stored student init's shape, layers and sha256
)


@cache
def _validator():
    import jsonschema

    schema = json.loads(resources.files("hskcache").joinpath(SCHEMA_RESOURCE).read_text())
    return jsonschema.Draft202012Validator(schema)


def validate_manifest(manifest: dict, where: str) -> None:
    """Raise CacheError listing every schema violation at once."""
    problems = sorted(_validator().iter_errors(manifest), key=lambda e: list(e.path))
    if problems:
        lines = "; ".join(
            f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in problems[:5]
        )
        raise CacheError(f"{where}: manifest does not match the schema ({lines})")


def get_field(manifest: dict, dotted: str):
    node = manifest
    for part in dotted.split("."):
        node = node[part]
    return node


def compute_identity(manifest: dict) -> str:
    """sha256 over (teacher weights, tokenizer, data fingerprint, selection, max length,
    stored student inits)."""
    core = {f: get_field(manifest, f) for f in IDENTITY_FIELDS}
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


def first_difference(expected, found, prefix: str = "") -> tuple[str, object, object] | None:
    """The first (dotted field, expected, found) where two manifests differ, or None."""
    if isinstance(expected, dict) and isinstance(found, dict):
        for key in sorted(set(expected) | set(found)):
            diff = first_difference(expected.get(key), found.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return None
    if expected != found:
        return prefix.rstrip("."), expected, found
    return None


def check_same(expected: dict, found: dict, ignore: tuple[str, ...], hint: str) -> None:
    """Raise CacheMismatchError naming the first field (outside `ignore`) that differs."""
    strip = lambda m: {k: v for k, v in m.items() if k not in ignore}  # noqa: E731
    diff = first_difference(strip(expected), strip(found))
    if diff:
        raise CacheMismatchError(*diff, hint=hint)
