"""The training kit inside a cache: tokenizer, teacher config, student inits, optional teacher.

A cache must train a student on a machine that never saw the teacher, so `hskcache build` stores,
as plain objects under `assets/` in the zarr store (local folder or object storage alike):

- `assets/tokenizer/*`: the teacher's tokenizer, as `save_pretrained` writes it;
- `assets/teacher/config.json`: the teacher's config (`fit --init random`, shape checks);
- `assets/students/<name>/{config.json,model.safetensors}`: per student shape, the tensors that
  `fit --init select` copies from the teacher, and the student's config;
- with `--bundle-teacher`, `assets/teacher/*.safetensors` too: the whole teacher, which
  `hskcache export-teacher` writes back out as a model folder.

The manifest's `assets` section maps each folder's file names to store keys; every key is in the
`objects` table (size + sha256), so `verify` and copies check them like shards. Every object is a
pure function of the teacher and the shapes, so a resumed build writes the same bytes.
"""

from __future__ import annotations

import atexit
import hashlib
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save
from zarr.abc.store import Store
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from hskcache.errors import CacheError, ConfigError, TeacherError
from hskcache.hub import hub_reachable
from hskcache.importance import Ranking
from hskcache.manifest import Assets, ManifestView, StudentInit
from hskcache.names import check_file_name, check_key
from hskcache.shapes import (
    DEFAULT_STUDENT,
    FULL_WIDTH,
    PRESETS,
    default_layer_choice,
    resolve_shape,
    student_shape,
)
from hskcache.storage.objects import check_object, read_object
from hskcache.teacher import tokenizer_sha256
from hskcache.weight_selection import layer_subset, load_weights, select_into, student_config

PREFIX = "assets"
WEIGHTS = "model.safetensors"


@dataclass
class Kit:
    """What a build stores besides the arrays: the manifest section and the objects' contents."""

    section: dict  # manifest["assets"]
    objects: dict[str, bytes | Path] = field(default_factory=dict)  # key -> bytes or a file


def teacher_folder(name: str) -> Path:
    """The local folder of a teacher given as a folder or a hub name (its cached snapshot).

    Raises:
        TeacherError: a hub name that is neither cached nor downloadable.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    # lazy: the hub client only for a teacher named by hub id
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=not hub_reachable()))
    except Exception as e:  # the hub client raises many kinds; one line for all of them
        raise TeacherError(
            f"{name}: cannot find the teacher's files to store in the cache ({e}); pass a "
            "local --teacher folder"
        ) from e


def default_student(student_layers: int) -> str | None:
    """The init a build stores when no `--student` is named: `DEFAULT_STUDENT` where it is as
    deep as the cache's student, else the first full-width subset or preset that deep (full6 for
    6, tiny for 2), so `fit` finds the init its own default asks for."""
    shapes = {DEFAULT_STUDENT: student_shape(DEFAULT_STUDENT)} | FULL_WIDTH | PRESETS
    return next((n for n, s in shapes.items() if s["num_hidden_layers"] == student_layers), None)


def student_name(student: str) -> str:
    """A preset's name, or a JSON shape file's stem made safe for a store key."""
    if student in PRESETS:
        return student
    return re.sub(r"[^A-Za-z0-9._-]", "_", Path(student).stem) or "student"


def make_kit(
    teacher_name: str,
    tokenizer,
    tokenizer_sha: str,
    students: list[str],
    student_layers: int,
    num_labels: int,
    bundle_teacher: bool,
    ranking: Ranking | None = None,
    calibration_rows: int = 0,
    layer_choice: str | None = None,
    l_top: int | None = None,
) -> Kit:
    """Everything the cache will carry for training, computed before anything is written.

    Args:
        teacher_name: the teacher folder or hub name the build loaded.
        tokenizer: the teacher's loaded tokenizer; `tokenizer_sha` its `tokenizer_sha256`.
        students: `--student` values (preset names or JSON shape files); empty means the preset
            as deep as `student_layers`, skipped with a note when the teacher cannot yield it.
        num_labels: the task's labels (the student's head).
        bundle_teacher: also store the teacher's weights.
        ranking: select each init's dims by this importance ranking (computed on the first
            `calibration_rows` rows of the build), not as prefixes.
        layer_choice: which teacher layers each init copies (`layer_subset`, with the
            selection's `l_top` for `mapped`); None: each shape's default
            (`default_layer_choice`).

    Raises:
        ConfigError: an unknown or unselectable `--student`, two shapes with one name.
        TeacherError: the tokenizer does not survive `save_pretrained` unchanged.
    """
    # lazy: transformers takes seconds to import; commands that load no model skip it
    from transformers import AutoConfig

    folder = teacher_folder(teacher_name)
    kit = Kit(section={})
    tok_files = _tokenizer_files(tokenizer, tokenizer_sha, teacher_name)
    tokenizer_keys = {n: f"{PREFIX}/tokenizer/{n}" for n in tok_files}
    kit.objects |= {tokenizer_keys[n]: data for n, data in tok_files.items()}
    config_key = f"{PREFIX}/teacher/config.json"
    kit.objects[config_key] = (folder / "config.json").read_bytes()
    teacher_config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    explicit = bool(students)
    if not explicit:  # the default is skipped, not an error, when it does not fit the teacher
        name = default_student(student_layers)
        students = [] if name is None else [name]
    state = load_weights(folder) if students else {}
    entries: dict[str, dict] = {}
    for student in students:
        name = student_name(student)
        try:
            shape = student_shape(student)
            if student in FULL_WIDTH:  # stored whole: the teacher's width, heads and FFN
                shape = resolve_shape(shape, teacher_config)
            layers = layer_subset(
                teacher_config.num_hidden_layers,
                shape["num_hidden_layers"],
                layer_choice or default_layer_choice(student),
                l_top,
            )
            files = _student_files(teacher_config, state, shape, num_labels, ranking, layers)
        except ConfigError as e:
            if explicit:
                raise ConfigError(f"--student {student}: {e}") from e
            continue  # `students_line` says so in the build output
        if name in entries:
            if entries[name]["shape"] != shape:
                raise ConfigError(
                    f"--student {student}: two different shapes are named '{name}'; rename one "
                    "JSON file"
                )
            continue
        keys = {n: f"{PREFIX}/students/{name}/{n}" for n in files}
        kit.objects |= {keys[n]: data for n, data in files.items()}
        entries[name] = {
            "shape": shape,
            "teacher_layers": layers,
            "files": keys,
            "sha256": hashlib.sha256(files[WEIGHTS]).hexdigest(),
        }
        if ranking is not None:  # absent for prefix inits: caches built before keep their identity
            kept = ranking.kept_hidden(shape["hidden_size"]).tolist()
            entries[name] |= {
                "select": {"by": "importance", "calibration_rows": calibration_rows},
                "hidden_dims": kept,
            }
    bundle = None
    if bundle_teacher:
        bundle = {"config.json": config_key, **tokenizer_keys}
        weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.safetensors.*"))
        for f in weights:  # shards and their index, read from disk only when written
            bundle[f.name] = f"{PREFIX}/teacher/{f.name}"
            kit.objects[bundle[f.name]] = f
    kit.section = {
        "tokenizer": tokenizer_keys,
        "teacher_config": config_key,
        "students": entries,
        "teacher": bundle,
    }
    return kit


def _tokenizer_files(tokenizer, sha: str, where: str) -> dict[str, bytes]:
    """The tokenizer as `save_pretrained` writes it, checked to load back identical."""
    # lazy: transformers takes seconds to import; commands that load no model skip it
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="hskcache-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        files = {f.name: f.read_bytes() for f in sorted(Path(tmp).iterdir()) if f.is_file()}
        again = AutoTokenizer.from_pretrained(tmp, use_fast=True, trust_remote_code=False)
        if tokenizer_sha256(again) != sha:
            raise TeacherError(
                f"{where}: the tokenizer does not load back identical after save_pretrained, "
                "so the cache cannot carry it; re-save the teacher's tokenizer with this "
                "transformers version"
            )
    return files


def _student_files(teacher_config, state, shape: dict, num_labels: int, ranking, layers):
    """config.json + model.safetensors of one selected student, and the teacher layers kept.

    Only the tensors copied from the teacher are stored: `fit` builds the student seeded with
    its own `--seed` and loads them over it, which is exactly what selecting from the teacher
    folder gives (a head the teacher lacks stays the seeded one).
    """
    # lazy: transformers takes seconds to import; commands that load no model skip it
    from transformers import AutoModelForSequenceClassification

    config = student_config(teacher_config, shape, num_labels)
    with torch.random.fork_rng():  # the throwaway init must not move the build's RNG
        model = AutoModelForSequenceClassification.from_config(config)
    _, copied = select_into(model, state, teacher_config, ranking, layers)
    sd = model.state_dict()
    weights = save({n: sd[n].contiguous() for n in copied}, metadata={"format": "pt"})
    return {"config.json": config.to_json_string().encode(), WEIGHTS: weights}


def asset_keys(section: dict) -> list[str]:
    """Every store key the manifest's `assets` section names (for the objects table)."""
    keys = set(section["tokenizer"].values()) | {section["teacher_config"]}
    for entry in section["students"].values():
        keys |= set(entry["files"].values())
    keys |= set((section["teacher"] or {}).values())
    return sorted(keys)


def write_kit(store: Store, kit: Kit) -> None:
    """Write every kit object (again, on a resume: the same bytes) through the store API."""
    proto = default_buffer_prototype()
    for key, data in sorted(kit.objects.items()):
        raw = data.read_bytes() if isinstance(data, Path) else data
        sync(store.set(key, proto.buffer.from_bytes(raw)))


def read_asset(cache, key: str) -> bytes:
    """One asset's bytes, checked against the manifest's objects table.

    Raises:
        CacheError: the object is missing or not what the build recorded.
    """
    data = read_object(cache.group.store, check_key(key, cache.url, "assets"))
    want = (cache.manifest["objects"] or {}).get(key)  # JSON records, as check_object takes
    problem = check_object(key, data, want) if want else f"object '{key}' is not in the table"
    if problem:
        raise CacheError(f"{cache.url}: {problem}; pull or rebuild the cache")
    return data


def materialise(cache, files: dict[str, str], dest: Path | None = None) -> Path:
    """Write a stored folder ({file name: key}) to `dest`, or to a temp dir removed at exit.

    A temp dir lives as long as the process: a loaded tokenizer may read its files again when
    it is saved with a checkpoint.
    """
    if dest is None:
        dest = Path(tempfile.mkdtemp(prefix="hsk-assets-"))
        atexit.register(shutil.rmtree, dest, True)
    for name in files:  # every name checked before the first file is written
        check_file_name(name, cache.url, "assets")
    dest.mkdir(parents=True, exist_ok=True)
    for name, key in files.items():
        (dest / name).write_bytes(read_asset(cache, key))
    return dest


def stored_student(cache, shape: dict) -> tuple[str, StudentInit] | None:
    """(name, entry) of the stored init with exactly this shape, or None."""
    for name, entry in cache.info.assets.students.items():
        if entry.shape == shape:
            return name, entry
    return None


def describe_students(section: Assets) -> str:
    """'tiny (2L-16H)', comma separated, or 'none'."""
    return (
        ", ".join(
            f"{n} ({e.shape['num_hidden_layers']}L-{e.shape['hidden_size']}H)"
            for n, e in section.students.items()
        )
        or "none"
    )


def students_line(info: ManifestView) -> str:
    """What the build output says about stored student inits, and why there is none."""
    section = info.assets
    if section.students:
        return f"student inits: {describe_students(section)}"
    depth = info.selection.student_layers
    name = default_student(depth)
    t = info.teacher
    if name is None:
        why = f"no preset is {depth} layers deep"
    else:
        shape = student_shape(name)
        width = f"{shape['hidden_size']}H" if "hidden_size" in shape else "the teacher's width"
        why = (
            f"the default '{name}' ({shape['num_hidden_layers']}L, {width}) cannot be selected "
            f"from this {t.num_hidden_layers}L-{t.hidden_size}H teacher"
        )
    return (
        f"no student init stored ({why}): add --student NAME_OR_JSON, or fit with "
        "--init random or --init-from TEACHER_DIR"
    )


def export_teacher(cache, dest: Path) -> Path:
    """Write a bundled teacher out as a model folder (for --init-from or --online-teacher).

    Raises:
        CacheError: the cache was built without --bundle-teacher, or `dest` is not empty.
    """
    bundle = cache.info.assets.teacher
    if bundle is None:
        raise CacheError(
            f"{cache.url}: this cache bundles no teacher (built without --bundle-teacher); "
            "rebuild it with --bundle-teacher, or use the teacher folder itself"
        )
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise CacheError(f"{dest}: exists and is not an empty folder; choose a new folder")
    return materialise(cache, bundle, dest)
