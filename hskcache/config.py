"""Typed command configs: the same fields from CLI flags or a TOML file; unknown keys are errors.

Every config validates itself and reports every problem at once, and its resolved form is
written into what the command produces (the cache manifest, a checkpoint folder).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import tomllib

from hskcache.errors import ConfigError
from hskcache.layout import COMPRESSORS, VALUE_DTYPES
from hskcache.selection import SCORE_LAYERS, parse_hsk

T = TypeVar("T")


def merge_file(cls: type[T], path: str | None, flags: dict) -> T:
    """Build `cls` from a TOML file (if any) overlaid with the flags the user set.

    Raises:
        ConfigError: unreadable file or keys that `cls` does not have (all of them named).
    """
    values: dict = {}
    if path:
        try:
            values = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{path}: cannot read config file ({e})") from e
    values.update({k: v for k, v in flags.items() if v is not None})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}unknown config keys {unknown}; known: {sorted(known)}")
    return cls(**values)


@dataclass
class BuildConfig:
    """Everything `hskcache build` needs. See `hskcache build --help` for each field."""

    data: str
    out: str
    task: str | None = None
    split: str = "train"
    hsk: str = "1l_10t_0.1h"
    length: str = "attention-no-sep"
    width_strategy: str = "magnitude"
    score_layer: str = "producing"
    student_layers: int = 4
    l_top: int | None = None
    teacher_layers: list[int] = field(default_factory=list)
    seed: int = 0
    teacher: str | None = None
    max_length: int | None = None
    batch_size: int = 32
    device: str = "cpu"
    dtype: str = "float32"
    value_dtype: str = "float16"
    compressor: str = "none"
    chunk_rows: int | None = None
    chunks_per_shard: int = 8
    limit: int | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    overwrite: bool = False

    def validate(self) -> None:
        """Raise one ConfigError naming every bad setting."""
        problems = []
        try:
            parse_hsk(self.hsk, self.length, self.width_strategy, self.seed)
        except ConfigError as e:
            problems.append(str(e))
        checks = [
            (self.score_layer in SCORE_LAYERS, f"score_layer must be one of {SCORE_LAYERS}"),
            (self.value_dtype in VALUE_DTYPES, f"value_dtype must be one of {list(VALUE_DTYPES)}"),
            (self.compressor in COMPRESSORS, f"compressor must be one of {COMPRESSORS}"),
            (self.student_layers >= 1, "student_layers must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.chunk_rows is None or self.chunk_rows >= 1, "chunk_rows must be >= 1"),
            (self.chunks_per_shard >= 1, "chunks_per_shard must be >= 1"),
            (self.limit is None or self.limit >= 1, "limit must be >= 1"),
            (self.max_length is None or self.max_length >= 2, "max_length must be >= 2"),
            (self.device == "cpu" or self.device.startswith("cuda"), "device must be cpu|cuda"),
        ]
        problems += [msg for ok, msg in checks if not ok]
        if problems:
            raise ConfigError("; ".join(problems))
