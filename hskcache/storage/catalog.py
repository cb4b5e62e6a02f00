"""`hskcache ls`: every cache under a prefix, and which of them a given fit could use.

A cache is found by its root `zarr.json`: a group whose attributes hold an hskcache manifest.
Arrays' and nested groups' `zarr.json` files under a cache root are skipped unread. A folder
holding a cache's array metadata but no root is a half-copied (or half-built) cache: it is
listed with status `partial`, since its manifest only lands last.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import suppress
from pathlib import PurePosixPath

from hskcache.errors import CacheError, ConfigError
from hskcache.manifest import FORMAT_VERSION, MANIFEST_KEY, content_digest
from hskcache.names import model_label
from hskcache.reader import open_cache
from hskcache.storage.location import locate
from hskcache.storage.objects import ROOT_KEY
from hskcache.tasks import get_task

# Arrays every cache has: their metadata without a root above marks a partial copy.
COMMON_ARRAYS = ("input_ids", "token_type_ids", "lengths", "labels", "logits", "n_valid")


def _under(d: str, root: str) -> bool:
    return root == "" or d == root or d.startswith(root + "/")


def find_caches(url: str) -> list[dict]:
    """One summary per cache under `url` (itself included), sorted by location.

    Raises:
        HskError: the URL cannot be listed (unknown protocol, missing package, no bucket).
    """
    loc = locate(url)
    files = loc.listing()  # `url` itself a cache: its root is the key `zarr.json`
    if not files and not loc.fs.exists(loc.root):
        raise CacheError(f"{url}: nothing there (no such folder, bucket or prefix)")
    metas = sorted(
        (k for k in files if k == ROOT_KEY or k.endswith("/" + ROOT_KEY)),
        key=lambda k: (k.count("/"), k),
    )
    base = url.rstrip("/")
    roots, found = [], []
    for key in metas:
        d = str(PurePosixPath(key).parent).lstrip(".")
        if any(_under(d, r) for r in roots):
            continue
        manifest = _manifest_of(loc.fs.cat_file(loc.path(key)))
        if manifest is None:
            continue
        roots.append(d)
        inside = {k: v for k, v in files.items() if _under(str(PurePosixPath(k).parent), d)}
        found.append(_summary(f"{base}/{d}" if d else base, manifest, inside, files[key]))
    partial: dict[str, int] = {}
    for key in metas:
        parts = key.split("/")
        if len(parts) >= 2 and parts[-2] in COMMON_ARRAYS:
            d = "/".join(parts[:-2])
            if not any(_under(d, r) for r in roots):
                partial[d] = sum(v.get("size", 0) for k, v in files.items() if _under(k, d))
    found += [_partial(f"{base}/{d}" if d else base, n) for d, n in partial.items()]
    return sorted(found, key=lambda c: c["url"])


def _manifest_of(data: bytes) -> dict | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return None
    m = (doc.get("attributes") or {}).get(MANIFEST_KEY)
    return m if isinstance(m, dict) else None


def _get(m: dict, dotted: str):
    node = m
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _summary(url: str, m: dict, files: dict[str, dict], root_info: dict) -> dict:
    """The columns of one cache; `manifest` is kept for --match and left out of --json."""
    table = m.get("objects")
    if isinstance(table, dict):
        size = sum(o["bytes"] for o in table.values()) + int(root_info.get("size", 0))
    else:  # an unfinished build has no table yet: what is there
        size = sum(int(v.get("size", 0)) for v in files.values())
    status = m.get("status", "?")
    if m.get("format_version") != FORMAT_VERSION:
        status = f"format {m.get('format_version')}"
    return {
        "url": url,
        "identity": m.get("identity"),
        "content": _content(m),
        "teacher": {
            "name": _teacher_label(m),
            "weights_sha256": _get(m, "teacher.weights_sha256"),
        },
        "data": {
            "task": _get(m, "data.task"),
            "split": _get(m, "data.split"),
            "fingerprint": _get(m, "data.fingerprint"),
        },
        "selection": _get(m, "selection.name"),
        "max_length": m.get("max_length"),
        "rows": _get(m, "counts.num_examples"),
        "bytes": size,
        "status": status,
        "manifest": m,
    }


def _content(m: dict) -> str | None:
    """The content digest of a manifest that may be malformed (ls lists what it finds)."""
    try:
        return content_digest(m)
    except (KeyError, TypeError, AttributeError):
        return None


def _partial(url: str, size: int) -> dict:
    return {
        "url": url,
        "identity": None,
        "content": None,
        "teacher": {"name": None, "weights_sha256": None},
        "data": {"task": None, "split": None, "fingerprint": None},
        "selection": None,
        "max_length": None,
        "rows": None,
        "bytes": size,
        "status": "partial",
        "manifest": None,
    }


def _prefix(field: str) -> Callable[[dict, str], bool]:
    return lambda m, v: str(_get(m, field) or "").startswith(v.lower())


def _equal(field: str) -> Callable[[dict, str], bool]:
    return lambda m, v: str(_get(m, field)) == v


def _teacher_label(m: dict) -> str | None:
    """The teacher as `ls` shows it (older caches recorded the builder's absolute path)."""
    name = _get(m, "teacher.name")
    return model_label(name) if isinstance(name, str) else None


def _task(m: dict, v: str) -> bool:
    with suppress(ConfigError):  # a table file's own task name is compared as given
        v = get_task(v).name
    return _get(m, "data.task") == v


# --match keys: what a fit is about (its data, teacher, selection, length, student depth).
FILTERS: dict[str, Callable[[dict, str], bool]] = {
    "task": _task,
    "split": _equal("data.split"),
    "hsk": _equal("selection.name"),
    "teacher": lambda m, v: (
        _prefix("teacher.weights_sha256")(m, v) or v in (_get(m, "teacher.name"), _teacher_label(m))
    ),
    "tokenizer": _prefix("tokenizer.sha256"),
    "data": _prefix("data.fingerprint"),
    "max_length": _equal("max_length"),
    "student_layers": _equal("selection.student_layers"),
    "length": _equal("selection.length"),
    "width_strategy": _equal("selection.width_strategy"),
    "value_dtype": _equal("storage.value_dtype"),
    "identity": _prefix("identity"),
    "content": lambda m, v: str(_content(m) or "").startswith(v.lower()),
}


def parse_filters(text: str) -> dict[str, str]:
    """`key=value,key=value` -> {key: value}.

    Raises:
        ConfigError: a part without '=', or a key no filter knows.
    """
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or not value.strip():
            raise ConfigError(
                f"--match '{part}': expected key=value (or a cache path/URL); keys: "
                f"{', '.join(FILTERS)}"
            )
        if key not in FILTERS:
            raise ConfigError(f"unknown --match key '{key}'; known keys: {', '.join(FILTERS)}")
        out[key] = value.strip()
    return out


def match(caches: list[dict], spec: str) -> list[dict]:
    """The complete caches a fit could use: those equal to a cache's identity, or passing every
    `key=value` filter.

    Raises:
        ConfigError: a bad filter. CacheError: `spec` names no readable cache.
    """
    if "=" in spec:
        filters = parse_filters(spec)
        keep = lambda m: all(FILTERS[k](m, v) for k, v in filters.items())  # noqa: E731
    else:
        identity = open_cache(spec, require_complete=False).info.identity
        keep = lambda m: m.get("identity") == identity  # noqa: E731
    return [c for c in caches if c["status"] == "complete" and keep(c["manifest"])]


def public(cache: dict) -> dict:
    """A summary without the full manifest, for --json."""
    return {k: v for k, v in cache.items() if k != "manifest"}
