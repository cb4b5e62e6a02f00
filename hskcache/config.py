"""Typed command configs: the same fields from CLI flags or a TOML file; unknown keys are errors.

Every config validates itself and reports every problem at once, and its resolved form is
written into what the command produces (the cache manifest, a checkpoint folder).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from hskcache.data import HFDataset, utf8_text
from hskcache.devices import amp_problem, check_device
from hskcache.errors import ConfigError
from hskcache.hsk import SCORE_LAYERS, SELECTION_DEFAULTS, SelectionConfig
from hskcache.layout import COMPRESSORS, VALUE_DTYPES

T = TypeVar("T")
BATCH_ORDERS = ("length", "data")  # `hskcache build --batch-order`


def merge_file(cls: type[T], path: str | None, flags: dict) -> T:
    """Build `cls` from a TOML file (if any) overlaid with the flags the user set.

    Raises:
        ConfigError: unreadable file, keys that `cls` does not have, values of the wrong type,
            or required fields set nowhere (each group with all of its keys named).
        DataFormatError: a file that is not UTF-8, naming its line.
    """
    values: dict = read_toml(path, "config file") if path else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    fields = dataclasses.fields(cls)
    known = {f.name for f in fields}
    unknown = sorted(set(values) - known)
    where = f"{path}: " if path else ""
    if unknown:
        raise ConfigError(f"{where}unknown config keys {unknown}; known: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    wrong = [
        f"{k} = {v!r} is {type(v).__name__}, expected {type_name(hints[k])}"
        for k, v in values.items()
        if not matches(v, hints[k])
    ]
    if wrong:
        raise ConfigError(f"{where}wrong value types: {'; '.join(wrong)}")
    missing = [
        f.name
        for f in fields
        if f.name not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        flags_named = ", ".join("--" + k.replace("_", "-") for k in missing)
        raise ConfigError(
            f"missing required setting(s) {missing}; pass {flags_named} or set "
            f"{'it' if len(missing) == 1 else 'them'} in --config"
        )
    return cls(**values)


def read_toml(path: str, what: str) -> dict:
    """A TOML file's top table; one line naming the file (`what` it is) when it cannot be read.

    Raises:
        ConfigError: missing or unreadable file, bad TOML.
        DataFormatError: a file that is not UTF-8, naming its line.
    """
    try:
        return tomllib.loads(utf8_text(Path(path)))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot read {what} ({e})") from e


def matches(value, hint) -> bool:
    """Whether a TOML value fits a dataclass field's type (an int is a float; a bool is not
    an int): the one type rule of every config file, flag set and study table."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(hint) or (typing.Any,)
        return isinstance(value, list) and all(matches(v, item) for v in value)
    if origin is dict:
        _, item = typing.get_args(hint) or (str, typing.Any)
        return isinstance(value, dict) and all(matches(v, item) for v in value.values())
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # Any and other hints: not checked


def type_name(hint) -> str:
    """A field's type as a config file's reader would write it: `int`, `list[int]`."""
    if typing.get_args(hint) or not isinstance(hint, type):
        return str(hint).replace("typing.", "")
    return hint.__name__


SELECTS = ("prefix", "importance")
LAYER_CHOICES = ("even", "bottom", "mapped")  # weight_selection.layer_subset's


@dataclass
class BuildConfig:
    """Everything `hskcache build` needs. See `hskcache build --help` for each field.

    The selection settings are flat fields (one TOML key and one flag each) with the defaults
    of `SelectionConfig`; `selection` gathers them.
    """

    data: str | HFDataset  # a path or hub name, or (from Python) rows in memory
    out: str
    task: str | None = None
    split: str = "train"
    hsk: str = SELECTION_DEFAULTS.hsk
    length: str = SELECTION_DEFAULTS.length
    width_strategy: str = SELECTION_DEFAULTS.width_strategy
    score_layer: str = SELECTION_DEFAULTS.score_layer
    student_layers: int = SELECTION_DEFAULTS.student_layers
    # student inits stored in the cache (presets or JSON shapes); empty: the preset this deep
    student: list[str] = field(default_factory=list)
    bundle_teacher: bool = False  # also store the whole teacher inside the cache
    # which dims a stored student init keeps: the first ones, or the most active (importance.py)
    select: str = "prefix"
    # which teacher layers a stored student init copies: even | bottom | mapped
    # (weight_selection.py); None: each shape's own (shapes.default_layer_choice)
    layer_choice: str | None = None
    l_top: int | None = None
    teacher_layers: list[int] = field(default_factory=list)
    seed: int = 0
    teacher: str | None = None
    max_length: int | None = None
    batch_size: int = 32
    batch_order: str = "length"  # teacher batches: each shard's rows longest first, or "data"
    device: str = "cpu"
    dtype: str = "float32"
    amp: str = "none"  # autocast of the teacher's forward: none | bf16 | fp16 (CUDA)
    value_dtype: str = "float16"
    compressor: str = "none"
    chunk_rows: int | None = None
    chunks_per_shard: int = 8
    limit: int | None = None
    # keep gold labels for the first N rows only; the rest are unlabelled (teacher targets only)
    labelled: int | None = None
    # N seeded word-replacement variants of every row, teacher-labelled only (augment.py)
    augment: int = 0
    augment_neighbours: int = 15  # K nearest tokens in the teacher's input embeddings
    augment_probability: float = 0.4  # chance that each replaceable word is replaced
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    overwrite: bool = False
    break_lock: bool = False  # take the cache's lock from another build (it must be dead)

    @property
    def selection(self) -> SelectionConfig:
        """The selection settings of this build."""
        return SelectionConfig(
            self.hsk,
            self.length,
            self.width_strategy,
            self.score_layer,
            self.student_layers,
            self.l_top,
            list(self.teacher_layers),
            self.seed,
        )

    def validate(self) -> None:
        """Raise one ConfigError naming every bad setting."""
        problems = []
        try:
            self.selection.parse()
        except ConfigError as e:
            problems.append(str(e))
        checks = [
            (self.score_layer in SCORE_LAYERS, f"score_layer must be one of {SCORE_LAYERS}"),
            (self.value_dtype in VALUE_DTYPES, f"value_dtype must be one of {list(VALUE_DTYPES)}"),
            (self.compressor in COMPRESSORS, f"compressor must be one of {COMPRESSORS}"),
            (self.student_layers >= 1, "student_layers must be >= 1"),
            (self.select in SELECTS, f"select must be one of {list(SELECTS)}"),
            (
                self.layer_choice in (None, *LAYER_CHOICES),
                f"layer_choice must be one of {LAYER_CHOICES}",
            ),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.batch_order in BATCH_ORDERS, f"batch_order must be one of {list(BATCH_ORDERS)}"),
            (self.chunk_rows is None or self.chunk_rows >= 1, "chunk_rows must be >= 1"),
            (self.chunks_per_shard >= 1, "chunks_per_shard must be >= 1"),
            (self.limit is None or self.limit >= 1, "limit must be >= 1"),
            (self.labelled is None or self.labelled >= 0, "labelled must be >= 0"),
            (self.augment >= 0, "augment must be >= 0 (variants per row)"),
            (self.augment_neighbours >= 1, "augment_neighbours must be >= 1"),
            (0 < self.augment_probability <= 1, "augment_probability must be in (0, 1]"),
            (self.max_length is None or self.max_length >= 2, "max_length must be >= 2"),
            (self.device == "cpu" or self.device.startswith("cuda"), "device must be cpu|cuda"),
        ]
        problems += [msg for ok, msg in checks if not ok]
        if amp := amp_problem(self.amp, self.device):
            problems.append(amp)
        problems += _out_problems(self.out)
        if self.device == "cpu" or self.device.startswith("cuda"):
            try:
                check_device(self.device)
            except ConfigError as e:
                problems.append(str(e))
        if problems:
            raise ConfigError("; ".join(problems))


def _out_problems(out: str) -> list[str]:
    """A local --out must be a folder (or not exist yet) under a folder we can write to."""
    if "://" in out:
        return []  # object storage: the store itself reports what it refuses
    path = Path(out).expanduser()
    if path.is_symlink():  # one rule: --overwrite never deletes through (or next to) a link
        return [
            f"out {out} is a symbolic link (to {os.readlink(path)}); pass the folder itself "
            "as --out"
        ]
    if path.exists() and not path.is_dir():
        return [f"out {out} is a file; --out must be a folder (new, or a cache to resume)"]
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        return [f"out {out}: {existing} is a file, not a folder; pick another --out"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"out {out}: {existing} is not writable; pick another --out"]
    return []


@dataclass
class DeriveConfig:
    """Everything `hskcache derive` needs; a selection field left None takes the source's."""

    src: str
    out: str
    hsk: str
    length: str | None = None
    width_strategy: str | None = None
    score_layer: str | None = None
    l_top: int | None = None
    teacher_layers: list[int] = field(default_factory=list)
    value_dtype: str | None = None
    compressor: str | None = None
    chunk_rows: int | None = None
    chunks_per_shard: int = 8  # as `hskcache build`
    overwrite: bool = False
    break_lock: bool = False  # take the lock of a writer that is dead

    def validate(self) -> None:
        """Raise one ConfigError naming every bad setting."""
        checks = [
            (
                self.score_layer in (None, *SCORE_LAYERS),
                f"score_layer must be one of {SCORE_LAYERS}",
            ),
            (
                self.value_dtype in (None, *VALUE_DTYPES),
                f"value_dtype must be one of {list(VALUE_DTYPES)}",
            ),
            (self.compressor in (None, *COMPRESSORS), f"compressor must be one of {COMPRESSORS}"),
            (self.chunk_rows is None or self.chunk_rows >= 1, "chunk_rows must be >= 1"),
            (self.chunks_per_shard >= 1, "chunks_per_shard must be >= 1"),
        ]
        problems = [msg for ok, msg in checks if not ok]
        if problems:
            raise ConfigError("; ".join(problems))
