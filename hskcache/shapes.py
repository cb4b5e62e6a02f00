"""Student shapes: the named presets and the other ways to give one (a JSON file of config
fields, a dict). Kept apart from the weight selection in students.py so the command configs
that check `--student` (and every `--help`) load without torch."""

from __future__ import annotations

import json
from pathlib import Path

from hskcache.errors import ConfigError

PRESETS: dict[str, dict[str, int]] = {
    "tinybert4": {
        "num_hidden_layers": 4,
        "hidden_size": 312,
        "num_attention_heads": 12,
        "intermediate_size": 1200,
    },
    "tinybert6": {
        "num_hidden_layers": 6,
        "hidden_size": 768,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "mini": {
        "num_hidden_layers": 4,
        "hidden_size": 128,
        "num_attention_heads": 4,
        "intermediate_size": 512,
    },
    "tiny": {
        "num_hidden_layers": 2,
        "hidden_size": 16,
        "num_attention_heads": 2,
        "intermediate_size": 32,
    },
}


# Full-width layer subsets (DistilBERT, PKD): the teacher's own width, heads and FFN, fewer
# layers; every tensor of a kept layer is copied whole. The missing fields are the teacher's
# (`resolve_shape`), so one name serves a 384- and a 768-wide teacher alike.
FULL_WIDTH: dict[str, dict[str, int]] = {
    "full4": {"num_hidden_layers": 4},
    "full6": {"num_hidden_layers": 6},
}
SHAPE_FIELDS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")

# The student `fit` trains, and `build` stores an init for, when none is named. From a
# BERT-base-sized teacher the 312-wide TinyBERT4 shape starts with none of its hidden states
# and, selected any way, learned MRPC only over augmented rows and stayed under 95% of the
# teacher on SST-2, where the teacher's bottom 4 layers at full width reached 95-98% of its MRPC F1
# and 98-99% of its SST-2 accuracy (docs/studies.md, "The paper-scale study");
# `--student tinybert4` is the paper's shape.
DEFAULT_STUDENT = "full4"


def default_layer_choice(student: str | dict) -> str:
    """The teacher layers an init copies when `--layer-choice` is not given: the bottom ones
    for a full-width subset (PKD; the nearest the teacher at the first step, measured in
    docs/cache-format.md), evenly spaced for any other shape (TinyBERT)."""
    return "bottom" if isinstance(student, str) and student in FULL_WIDTH else "even"


def resolve_shape(shape: dict, teacher_config) -> dict:
    """`shape` with the fields it leaves out taken from the teacher's config, as the student's
    config will have them."""
    return {k: getattr(teacher_config, k) for k in SHAPE_FIELDS} | dict(shape)


def student_shape(student: str | dict) -> dict:
    """A preset name, a JSON file of config fields (e.g. {"num_hidden_layers": 3, ...}),
    or such a dict -> the dict.

    Raises:
        ConfigError: an unknown name, a JSON file lacking a field.
        TeacherError: a JSON file asking for custom code (`auto_map`, an unknown model type).
    """
    if isinstance(student, dict):
        return student
    if student in PRESETS:
        return PRESETS[student]
    if student in FULL_WIDTH:
        return FULL_WIDTH[student]
    if student.endswith(".json") and Path(student).is_file():
        shape = json.loads(Path(student).read_text())
        missing = {"num_hidden_layers", "hidden_size", "num_attention_heads"} - set(shape)
        if missing:
            raise ConfigError(f"{student}: student config lacks {sorted(missing)}")
        # its fields go into the student's config.json: an auto_map would ride along
        from hskcache.teacher import refuse_custom_code  # lazy: imports transformers

        refuse_custom_code(shape, student)
        return shape
    raise ConfigError(
        f"unknown student '{student}'; use a preset ({', '.join([*PRESETS, *FULL_WIDTH])}) or "
        "a JSON file of config fields"
    )
