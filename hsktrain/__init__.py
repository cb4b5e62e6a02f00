"""hsktrain: train students from hskcache caches, with no teacher in memory.

The public API is what `__all__` names (docs/python.md shows each in use): `fit` and its
config, the cache as a torch dataset, the losses as modules, a Hugging Face `Trainer`
(`hsktrain.hf.DistillTrainer`, imported from there: it needs `accelerate`). Names load on
first use, so `import hsktrain` stays fast.
"""

from __future__ import annotations

import importlib

_HOMES = {
    "FitConfig": "hsktrain.config",
    "fit": "hsktrain.train",
    "evaluate_checkpoint": "hsktrain.evaluate",
    "CacheDataset": "hsktrain.dataset",  # rows in fit's order; seeded, DDP- and worker-aware
    "collate": "hsktrain.dataset",
    "HSKLoss": "hsktrain.losses",
    "PredictionLoss": "hsktrain.losses",
    "student_from_cache": "hsktrain.students",
    "projection_for": "hsktrain.projection",
    "fit_projection": "hsktrain.projection",
    "tokenizer_for": "hsktrain.tokenizer",  # a cache's stored tokenizer (or a folder's)
}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'hsktrain' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
