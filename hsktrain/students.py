"""Students: built in the teacher's family at a preset's shape, initialised by weight selection.

The shapes and the selection itself (pure functions) live in `hskcache.weight_selection`, because
`hskcache build` stores each asked-for student's selected weights inside the cache; here the
student is built for training: from a teacher folder, or from what a cache carries
(`student_from_cache`), with no teacher on the machine.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load

from hskcache import assets
from hskcache.assets import materialise
from hskcache.errors import ConfigError, TeacherError
from hskcache.importance import Ranking
from hskcache.shapes import (
    DEFAULT_STUDENT,
    FULL_WIDTH,
    default_layer_choice,
    resolve_shape,
    student_shape,
)
from hskcache.teacher import check_model_folder, refuse_custom_code
from hskcache.weight_selection import layer_subset, load_weights, select_into, student_config
from hsktrain.config import INITS


def build_student(
    init: str,
    source: str,
    shape: str | dict | None,
    num_labels: int,
    seed: int,
    ranking: Ranking | None = None,
    layers: tuple[str | None, int | None] = (None, None),
):
    """Build a student model.

    Args:
        init: `select` (slice the `source` teacher's weights), `random` (the teacher's family at
            `shape`, fresh weights) or `pretrained` (load `source` as the student itself).
        source: the teacher folder (select/random) or a student checkpoint (pretrained).
        shape: a preset name or a dict of config fields (select/random).
        num_labels: the task's labels.
        seed: seeds the fresh parameters.
        ranking: with `select`, keep the most active dims (importance.py), not the first ones.
        layers: with `select`, (layer choice, l_top) for `layer_subset`; a choice of None is
            the shape's own (`default_layer_choice`: bottom for full4 / full6, else even).

    Returns:
        (model, info) where info records the init for the run's config.
    """
    if init not in INITS:
        raise ConfigError(f"unknown init '{init}'; use one of {INITS}")
    with torch.random.fork_rng():  # seeded init that leaves the caller's RNG alone
        torch.manual_seed(seed)
        return _build(init, source, shape, num_labels, ranking, layers)


def _build(init: str, source: str, shape, num_labels: int, ranking: Ranking | None, layers):
    # lazy: transformers takes seconds to import; commands that load no model skip it
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if Path(source).is_dir():  # refuse custom code and pickle-only weights with one line
        check_model_folder(Path(source))
    if init == "pretrained":
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=num_labels, use_safetensors=True, trust_remote_code=False
        )
        return model, {"init": init, "source": str(source)}
    if shape is None:
        raise ConfigError(f"--student is required with --init {init}")
    teacher_config = AutoConfig.from_pretrained(source, trust_remote_code=False)
    model = AutoModelForSequenceClassification.from_config(
        student_config(teacher_config, shape, num_labels)
    )
    info = {"init": init, "source": str(source), "shape": shape}
    if init == "select":
        state = load_weights(source)
        choice, l_top = layers
        kept = layer_subset(
            teacher_config.num_hidden_layers,
            model.config.num_hidden_layers,
            choice or default_layer_choice(shape),
            l_top,
        )
        info["teacher_layers"], _ = select_into(model, state, teacher_config, ranking, kept)
        if ranking is not None:  # the projection starts from the kept channels
            info["hidden_dims"] = ranking.kept_hidden(model.config.hidden_size).tolist()
    return model, info


def student_from_cache(
    cache,
    init: str = "select",
    shape: str | dict = DEFAULT_STUDENT,
    num_labels: int | None = None,
    seed: int = 0,
    select: str | None = None,
    layer_choice: str | None = None,
):
    """Build a student from what a cache carries, with no teacher on the machine.

    `select` loads the init stored for this exact shape (`hskcache build --student`) over a
    student seeded like `build_student`'s, which makes the two identical; a shape the cache
    lacks is selected from a bundled teacher, if any. `random` needs only the teacher's config.
    `select` (prefix / importance) and `layer_choice`, when given, must match how the stored
    init was made; None takes it as it is. `num_labels` None: the cache's task's.

    Returns:
        (model, info) as `build_student`.

    Raises:
        ConfigError: the cache holds no init for this shape and no teacher to select it from,
            or its init was made otherwise than `select` / `layer_choice` ask.
        CacheError: a stored object is missing or altered.
    """
    if num_labels is None:
        data = cache.info.data
        num_labels = 1 if data.regression else len(data.label_names)
    section = cache.info.assets
    stored = assets.stored_student(cache, cache_shape(cache, shape)) if init == "select" else None
    if init == "select":
        _check_stored(cache, shape, stored, select, layer_choice)
    if init == "select" and stored is None:
        if section.teacher is None:
            raise ConfigError(
                f"{cache.url}: the cache holds no init for student '{shape}' (it holds: "
                f"{assets.describe_students(section)}); rebuild it with `hskcache build "
                f"--student {shape}` (or --bundle-teacher, which serves any shape), or pass "
                "--init-from TEACHER_DIR, or use --init random"
            )
        with tempfile.TemporaryDirectory(prefix="hsk-teacher-") as tmp:  # read, then dropped
            folder = assets.materialise(cache, section.teacher, Path(tmp))
            layers = (layer_choice, cache.info.selection.l_top)
            model, info = build_student(
                "select", str(folder), shape, num_labels, seed, None, layers
            )
        return model, {**info, "source": f"{cache.url} (bundled teacher)"}
    with torch.random.fork_rng():  # seeded as build_student seeds, the caller's RNG untouched
        torch.manual_seed(seed)
        return _from_cache(cache, init, shape, num_labels)


def _check_stored(cache, shape, stored, select: str | None, layer_choice: str | None) -> None:
    """Refuse a stored init made otherwise than asked, or none where only a teacher folder
    could make it (importance ranks on the teacher's activations).

    Raises:
        ConfigError: naming what the cache holds and how to get what was asked.
    """
    if stored is None:
        if select == "importance":
            raise ConfigError(
                f"{cache.url}: no stored init for student '{shape}' to take, and --select "
                "importance ranks on the teacher's activations: pass --init-from TEACHER_DIR, "
                f"or rebuild with `hskcache build --student {shape} --select importance`"
            )
        return
    name, entry = stored
    how = "importance" if entry.select else "prefix"
    if select is not None and how != select:
        raise ConfigError(
            f"{cache.url}: its '{name}' init was selected by {how}, not {select}; rebuild the "
            f"cache with `hskcache build --select {select}`, or pass --init-from TEACHER_DIR "
            "to select it here"
        )
    if layer_choice is None:
        return
    t = cache.info
    n_student = entry.shape["num_hidden_layers"]
    want = layer_subset(t.teacher.num_hidden_layers, n_student, layer_choice, t.selection.l_top)
    if list(entry.teacher_layers) != want:
        raise ConfigError(
            f"{cache.url}: its '{name}' init copies teacher layers {list(entry.teacher_layers)}, "
            f"--layer-choice {layer_choice} asks for {want}; rebuild the cache with `hskcache "
            f"build --layer-choice {layer_choice}`, or pass --init-from TEACHER_DIR to select "
            "it here"
        )


def _from_cache(cache, init: str, shape, num_labels: int):
    # lazy: transformers takes seconds to import; commands that load no model skip it
    from transformers import AutoModelForSequenceClassification

    section = cache.info.assets
    info = {"init": init, "source": f"{cache.url} (stored {init} init)", "shape": shape}
    if init == "random":
        teacher_config = _stored_config(cache, section.teacher_config)
        config = student_config(teacher_config, shape, num_labels)
        return AutoModelForSequenceClassification.from_config(config), info
    name, entry = assets.stored_student(cache, cache_shape(cache, shape))
    config = _stored_config(cache, entry.files["config.json"])
    if config.num_labels != num_labels:
        raise ConfigError(
            f"{cache.url}: stored student '{name}' has {config.num_labels} labels, the "
            f"cache's task {num_labels}; rebuild the cache"
        )
    model = AutoModelForSequenceClassification.from_config(config)
    state = load(assets.read_asset(cache, entry.files["model.safetensors"]))
    unknown = sorted(set(state) - set(model.state_dict()))
    if unknown:
        raise ConfigError(
            f"{cache.url}: stored student '{name}' has tensors this transformers version's "
            f"model lacks ({unknown[:3]}); rebuild the cache"
        )
    model.load_state_dict(state, strict=False)  # the rest keeps the seeded init
    info |= {"stored": name, "teacher_layers": list(entry.teacher_layers)}
    if entry.hidden_dims is not None:  # an importance-selected init: the projection follows it
        info["hidden_dims"] = list(entry.hidden_dims)
    return model, info


def cache_shape(cache, shape: str | dict) -> dict:
    """A student shape with the fields it leaves out (`full4`) from the cache's teacher."""
    if not (isinstance(shape, str) and shape in FULL_WIDTH):
        return student_shape(shape)
    # the stored config.json: the manifest's copy holds only the fields off the family's defaults
    return resolve_shape(FULL_WIDTH[shape], _stored_config(cache, cache.info.assets.teacher_config))


def _stored_config(cache, key: str):
    """A config.json the cache stores, loaded as transformers loads a folder's; one asking for
    custom code is refused as a teacher folder's is (a student saved from it would carry it)."""
    # lazy: transformers takes seconds to import; commands that load no model skip it
    from transformers import AutoConfig

    with tempfile.TemporaryDirectory(prefix="hsk-config-") as tmp:
        folder = materialise(cache, {"config.json": key}, Path(tmp))
        refuse_custom_code(json.loads((folder / "config.json").read_text()), f"{cache.url}/{key}")
        return AutoConfig.from_pretrained(folder, trust_remote_code=False)


def check_vocab(config, tokenizer, where: str) -> None:
    """Refuse a model with fewer token embeddings than its tokenizer has tokens: the first id
    past them would stop the run with an IndexError deep in the embedding lookup.

    Raises:
        TeacherError: naming both sizes and the fix.
    """
    if config.vocab_size < len(tokenizer):
        raise TeacherError(
            f"{where}: the model has {config.vocab_size} token embeddings but its tokenizer has "
            f"{len(tokenizer)} tokens; use the tokenizer it was trained with, or resize it "
            "(model.resize_token_embeddings(len(tokenizer))) and save it again"
        )
