"""hskcache: build, inspect and read offline caches of pruned teacher hidden-state knowledge.

The public API is what `__all__` names (docs/python.md shows each in use); every other module
is internal. Names load on first use, so `import hskcache` (and the CLI's `--help`) stays
fast: torch and transformers are imported only by what needs them.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_HOMES = {
    "open_cache": "hskcache.reader",  # path or fsspec URL -> Cache (.info, .targets, .read)
    "Cache": "hskcache.reader",
    "Batch": "hskcache.targets",  # decoded rows: inputs, labels, logits, HSK targets
    "LayerTargets": "hskcache.targets",
    "build_cache": "hskcache.build",
    "BuildConfig": "hskcache.config",
    "derive_cache": "hskcache.derive",
    "DeriveConfig": "hskcache.config",
    "verify_cache": "hskcache.verify",
    "push": "hskcache.storage.transfer",
    "pull": "hskcache.storage.transfer",
    "find_caches": "hskcache.storage.catalog",
    "HskError": "hskcache.errors",
    "pin_cpu_kernels": "hskcache.devices",  # first thing: the same bits on another Intel CPU
}
__all__ = ["__version__", *_HOMES]


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'hskcache' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
