"""Errors a user can act on. The CLI prints one red line for any `HskError` and exits 1."""

from __future__ import annotations


class HskError(Exception):
    """Base class: the message says what was found, what was expected, and what to do."""


class ConfigError(HskError):
    """A setting is invalid (bad HSK config string, max length above the model's, ...)."""


class DataFormatError(HskError):
    """Input data cannot be read as asked."""

    def __init__(self, path: str, message: str, line: int | None = None):
        self.path, self.line = path, line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class TeacherError(HskError):
    """The teacher checkpoint cannot be used (not BERT-style, pickle-only, missing files)."""


class CacheError(HskError):
    """A cache store is missing, unreadable or malformed."""


class CacheIncompleteError(CacheError):
    """The cache was never marked complete (a killed or running build)."""


class CacheMismatchError(CacheError):
    """A cache was built for something other than what is asked of it."""

    def __init__(self, field: str, expected: object, found: object, hint: str = ""):
        self.field, self.expected, self.found = field, expected, found
        msg = f"cache mismatch on '{field}': expected {expected!r}, found {found!r}"
        super().__init__(f"{msg}; {hint}" if hint else msg)


class UnsafeNameError(CacheError):
    """A manifest names a key or file that would leave the cache's folder (crafted or damaged)."""

    def __init__(self, where: str, field: str, name: object, why: str):
        self.field, self.name = field, name
        super().__init__(
            f"{where}: manifest field '{field}' names {name!r}, which {why}; refused: nothing "
            "a cache names may leave its folder. Get the cache again from a source you trust"
        )


class ExportError(HskError):
    """An exported model cannot be made, or does not compute what the PyTorch model does."""
