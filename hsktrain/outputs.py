"""Where a command writes (`fit --out`, `compare --out`, `bench --results`, a study folder):
checked before any work, so a run of minutes never ends in a traceback about its output path.

The check creates nothing the user would find: it makes and removes one empty folder in the
nearest existing folder on the way. A probe, not `os.access`: root passes `os.access` on /proc
and /sys, where nothing can be created.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hskcache.errors import ConfigError


def output_file(path: str | Path, flag: str) -> Path:
    """A file a command will write (its folders are made when it is written).

    Args:
        path: where the file goes.
        flag: how the user named it (`--out`), for the message.

    Raises:
        ConfigError: a folder is there, or nothing can be created where the file would go.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"{p}: {flag} is a folder; give a file path (or move the folder away)")
    _probe(p, flag)
    return p


def output_folder(path: str | Path, flag: str, what: str = "a folder") -> Path:
    """A folder a command will create or write into (created later, by its writer).

    Args:
        path: the folder.
        flag: how the user named it (`--out`, `STUDY`), for the message.
        what: what to give instead of a file, for the message.

    Raises:
        ConfigError: a file is there, or nothing can be created where the folder would go.
    """
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{p}: {flag} is a file; give {what}")
    _probe(p, flag)
    return p


def _probe(p: Path, flag: str) -> None:
    """Create and remove an empty folder in the nearest existing folder on the way to `p`."""
    anchor = next(a for a in (p, *p.absolute().parents) if a.exists())
    if anchor is p and not p.is_dir():  # a file to overwrite
        anchor = p.absolute().parent
    if not anchor.is_dir():
        raise ConfigError(f"{p}: {flag} cannot be written: {anchor} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hsk-probe-", dir=anchor))
    except OSError as e:
        raise ConfigError(
            f"{p}: {flag} cannot be written: nothing can be created in {anchor} ({e.strerror}); "
            "pick a place you can write to"
        ) from e


def new_output_file(path: str | Path, flag: str, overwrite: bool) -> Path:
    """A file a command writes whole (`export --onnx`, `predict --out`): an existing one is
    replaced only when asked.

    Raises:
        ConfigError: the file exists and `overwrite` is False, or as `output_file`.
    """
    p = output_file(path, flag)
    if p.exists() and not overwrite:
        raise ConfigError(f"{p}: {flag} exists; pass --overwrite to replace it, or choose another")
    return p
