"""The cache manifest: a JSON document in the group attributes, checked against the schema.

`schemas/cache.schema.json` documents every field; this module validates, hashes and compares
the dict, and turns a validated one into `ManifestView`, the typed view readers use.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources

from hskcache.errors import CacheError, CacheMismatchError
from hskcache.names import check_manifest_names

MANIFEST_KEY = "hskcache"
# 2: the manifest records every object's sha256 (`objects`).
# 3: the cache carries its training kit (`assets`: tokenizer, teacher config, student inits).
# 4: compact arrays: token ids uint16 while the vocabulary fits (`storage.ids_dtype`), small
#    integer arrays zstd-compressed, magnitude dims as ascending gap bytes with their values in
#    that order (ranked by |value| as stored); `build.batch_order`.
FORMAT_VERSION = 4
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
# Fields that enter the identity only where a cache sets them (absent or false elsewhere), so the
# caches built before them keep their identity: task-agnostic rows (HSK only, no logits) have the
# same data fingerprint as the same rows built with their task's logits; augmented rows (N,
# seed, rule and its parameters) are not in the fingerprint of the raw rows.
OPTIONAL_IDENTITY_FIELDS = ("data.task_agnostic", "data.augment")


@cache
def _validator():
    import jsonschema

    schema = json.loads(resources.files("hskcache").joinpath(SCHEMA_RESOURCE).read_text())
    return jsonschema.Draft202012Validator(schema)


def validate_manifest(manifest: dict, where: str) -> None:
    """Raise CacheError listing every schema violation at once.

    Unsafe names are refused first, by the one validator, so a crafted key reads as what it is
    rather than as a schema pattern mismatch.
    """
    check_manifest_names(manifest, where)
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
    for f in OPTIONAL_IDENTITY_FIELDS:
        parent, _, leaf = f.rpartition(".")
        if value := get_field(manifest, parent).get(leaf):
            core[f] = value
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


# Fields that say where or by what a cache was made, not what it holds: left out of the content
# digest, so two byte-identical builds from other paths, hosts or tool versions share one name.
PROVENANCE_FIELDS = ("tool_version", "status", "build", "derived_from")
PROVENANCE_NAMES = ("teacher.name", "tokenizer.name", "data.source")


def without(manifest: Mapping, fields: tuple[str, ...]) -> dict:
    """A deep copy of `manifest` without the (dotted) `fields`."""
    out = json.loads(json.dumps(dict(manifest)))
    for dotted in fields:
        parent, _, leaf = dotted.rpartition(".")
        node = get_field(out, parent) if parent else out
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def content_digest(manifest: Mapping) -> str:
    """sha256 over the whole manifest but its provenance: the identity, the objects table (every
    object's size and sha256) and how the arrays are read (storage, counts, layers, width dims).

    The identity names the knowledge (teacher, data, selection); this names the bytes too, so two
    caches that share a content digest are the same bytes read the same way. A cache rebuilt
    with another `--chunk-rows`, or with two chunk files and their table entries swapped, keeps
    its identity but gets another content digest.
    """
    core = without(manifest, PROVENANCE_FIELDS + PROVENANCE_NAMES)
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


def cache_name(identity: str, content: str) -> str:
    """A cache's name where copies meet (`push --by-identity`, the local shard cache): equal
    names mean equal knowledge and equal bytes (128 bits of each digest)."""
    return f"{identity[:32]}-{content[:32]}"


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
    """Raise CacheMismatchError naming the first field (outside the dotted `ignore`) that
    differs."""
    diff = first_difference(without(expected, ignore), without(found, ignore))
    if diff:
        raise CacheMismatchError(*diff, hint=hint)


# --- typed, read-only view ---------------------------------------------------------------------
# The manifest stays a JSON dict (it is written, hashed and compared field by field); readers go
# through this view so a misspelt field is an AttributeError at the line that reads it and an
# editor can list what a manifest holds. It is built only from a schema-valid manifest, so every
# required field is there and the view does no checking of its own.


class FrozenMap(Mapping):
    """A read-only mapping that, unlike `types.MappingProxyType`, pickles and deep-copies (a
    `Cache` may be sent to another process)."""

    def __init__(self, items: Mapping) -> None:
        self._items = dict(items)

    def __getitem__(self, key):
        return self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"FrozenMap({self._items!r})"


def _frozen(d: Mapping | None) -> FrozenMap | None:
    return None if d is None else FrozenMap(d)


@dataclass(frozen=True)
class TeacherInfo:
    name: str
    weights_sha256: str
    model_type: str
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_labels: int
    head_initialised: bool  # True: the checkpoint had no classifier; logits are a seeded head's
    config: Mapping  # the teacher's config.json


@dataclass(frozen=True)
class Tokenizer:
    name: str
    sha256: str
    class_name: str  # "class" in the manifest
    pad_token_id: int
    sep_token_id: int


@dataclass(frozen=True)
class Data:
    source: str
    task: str
    split: str
    fingerprint: str
    num_examples: int
    limit: int | None
    label_names: tuple[str, ...] | None  # None for regression
    regression: bool
    pair: bool
    # what a saved model calls each class (`config.id2label`); None: not known, or a cache built
    # before the field existed
    class_names: tuple[str, ...] | None = None
    task_agnostic: bool = False  # no task: HSK only, no logits array (absent before: False)
    augment: Mapping | None = None  # build --augment: n, seed, rule, neighbours, probability

    @property
    def num_logits(self) -> int:
        """Columns of the `logits` array: 0 (task-agnostic, no array), 1 (regression) or C."""
        if self.task_agnostic:
            return 0
        return 1 if self.regression else len(self.label_names or [0])


@dataclass(frozen=True)
class Selection:
    name: str  # e.g. "1l_10t_0.1h" or "full"
    layers: int | None
    tokens: int | None
    width: float
    length: str
    width_strategy: str
    seed: int
    l_top: int
    student_layers: int
    score_layer: str
    teacher_layers: tuple[int, ...] | None
    tokens_kept: int  # K: positions stored per example
    width_kept: int  # W: dims stored per token


@dataclass(frozen=True)
class Layer:
    """One distilled layer: student layer `student` learns teacher hidden state `teacher`."""

    student: int
    teacher: int
    score_attention: int | None


@dataclass(frozen=True)
class Storage:
    value_dtype: str  # float16, bfloat16 (stored as uint16 bits) or int8 (+ a scale per token)
    compressor: str  # of the values (and other float arrays); small integer arrays are zstd
    chunk_rows: int
    shard_rows: int
    ids_dtype: str  # token ids: uint16 while the vocabulary fits, else int32


@dataclass(frozen=True)
class Counts:
    num_examples: int
    num_chunks: int
    num_shards: int
    num_unlabelled: int = 0  # rows with the sentinel label, teacher targets only (absent: 0)


@dataclass(frozen=True)
class Build:
    batch_size: int
    batch_order: str
    device: str
    dtype: str
    amp: str


@dataclass(frozen=True)
class Stats:
    hsk_fraction: float
    bytes_per_example: float
    full_fp16_bytes_per_example: float
    mean_length: float


@dataclass(frozen=True)
class StoredObject:
    bytes: int
    sha256: str


@dataclass(frozen=True)
class StudentInit:
    shape: Mapping  # num_hidden_layers, hidden_size, num_attention_heads
    teacher_layers: tuple[int, ...]
    files: Mapping[str, str]  # file name -> store key under assets/
    sha256: str  # of model.safetensors
    select: Mapping | None = None  # {"by": "importance", "calibration_rows": N}; None: prefix
    hidden_dims: tuple[int, ...] | None = None  # teacher channels kept, in order; None: prefix


@dataclass(frozen=True)
class Assets:
    tokenizer: Mapping[str, str]  # file name -> store key
    teacher_config: str
    students: Mapping[str, StudentInit]
    teacher: Mapping[str, str] | None  # the bundled teacher folder, or None


@dataclass(frozen=True)
class DerivedFrom:
    identity: str
    source: str
    selection: str


@dataclass(frozen=True)
class ManifestView:
    """A schema-valid manifest as typed, read-only attributes (`Cache.info`)."""

    format_version: int
    tool_version: str
    status: str
    identity: str
    teacher: TeacherInfo
    tokenizer: Tokenizer
    data: Data
    max_length: int
    selection: Selection
    layers: tuple[Layer, ...]
    width_dims: tuple[int, ...] | None  # fixed dims; None when per token or full width
    storage: Storage
    counts: Counts
    build: Build
    stats: Stats | None  # None until the build completes
    objects: Mapping[str, StoredObject] | None  # None until the build completes
    assets: Assets
    derived_from: DerivedFrom | None
    content: str  # content_digest of the manifest

    @property
    def name(self) -> str:
        """`cache_name`: where equal caches meet."""
        return cache_name(self.identity, self.content)

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    @classmethod
    def from_dict(cls, m: Mapping) -> ManifestView:
        """The view of a manifest that already passed `validate_manifest`."""
        t, tok, d, s, a = m["teacher"], m["tokenizer"], m["data"], m["selection"], m["assets"]
        tuple_or_none = lambda xs: None if xs is None else tuple(xs)  # noqa: E731
        return cls(
            format_version=m["format_version"],
            tool_version=m["tool_version"],
            status=m["status"],
            identity=m["identity"],
            teacher=TeacherInfo(**{**t, "config": _frozen(t["config"])}),
            tokenizer=Tokenizer(
                tok["name"], tok["sha256"], tok["class"], tok["pad_token_id"], tok["sep_token_id"]
            ),
            data=Data(
                **{
                    **d,
                    "label_names": tuple_or_none(d["label_names"]),
                    "class_names": tuple_or_none(d.get("class_names")),
                    "augment": _frozen(d.get("augment")),
                }
            ),
            max_length=m["max_length"],
            selection=Selection(**{**s, "teacher_layers": tuple_or_none(s["teacher_layers"])}),
            layers=tuple(Layer(**la) for la in m["layers"]),
            width_dims=tuple_or_none(m["width_dims"]),
            storage=Storage(**m["storage"]),
            counts=Counts(**m["counts"]),
            build=Build(**m["build"]),
            stats=None if m["stats"] is None else Stats(**m["stats"]),
            objects=None
            if m["objects"] is None
            else FrozenMap({k: StoredObject(**o) for k, o in m["objects"].items()}),
            assets=Assets(
                tokenizer=_frozen(a["tokenizer"]),
                teacher_config=a["teacher_config"],
                students=FrozenMap(
                    {
                        name: StudentInit(
                            _frozen(e["shape"]),
                            tuple(e["teacher_layers"]),
                            _frozen(e["files"]),
                            e["sha256"],
                            _frozen(e.get("select")),
                            tuple_or_none(e.get("hidden_dims")),
                        )
                        for name, e in a["students"].items()
                    }
                ),
                teacher=_frozen(a["teacher"]),
            ),
            derived_from=DerivedFrom(**m["derived_from"]) if "derived_from" in m else None,
            content=content_digest(dict(m)),
        )
