"""What each GLUE task looks like: text columns, labels, metric family, default max length.

Column names are the headers of the standard GLUE TSVs; CoLA's train/dev files have no header,
so its columns are given by position. Class names are the GLUE dataset card's (the `ClassLabel`
names of the hub's `nyu-mll/glue`), for the tasks whose files hold only 0/1.
"""

from __future__ import annotations

from dataclasses import dataclass

from hskcache.errors import ConfigError


@dataclass(frozen=True)
class TaskSpec:
    name: str
    text: str | int
    text_pair: str | int | None
    label: str | int
    labels: tuple[str, ...] | None  # None: regression
    max_length: int
    has_header: bool = True
    hf_name: str = ""  # config name in the hub's `nyu-mll/glue`
    dev_file: str = "dev"
    # what a saved model calls each class; None: the labels are names already (or regression)
    class_names: tuple[str, ...] | None = None

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(
            "cola",
            3,
            None,
            1,
            _BINARY,
            64,
            has_header=False,
            hf_name="cola",
            class_names=("unacceptable", "acceptable"),
        ),
        TaskSpec(
            "sst2",
            "sentence",
            None,
            "label",
            _BINARY,
            64,
            hf_name="sst2",
            class_names=("negative", "positive"),
        ),
        TaskSpec(
            "mrpc",
            "#1 String",
            "#2 String",
            "Quality",
            _BINARY,
            128,
            hf_name="mrpc",
            class_names=("not_equivalent", "equivalent"),
        ),
        TaskSpec(
            "qqp",
            "question1",
            "question2",
            "is_duplicate",
            _BINARY,
            128,
            hf_name="qqp",
            class_names=("not_duplicate", "duplicate"),
        ),
        TaskSpec("stsb", "sentence1", "sentence2", "score", None, 128, hf_name="stsb"),
        TaskSpec(
            "mnli",
            "sentence1",
            "sentence2",
            "gold_label",
            ("entailment", "neutral", "contradiction"),  # the hub's label order
            128,
            hf_name="mnli",
            dev_file="dev_matched",
        ),
        TaskSpec("qnli", "question", "sentence", "label", _NLI2, 128, hf_name="qnli"),
        TaskSpec("rte", "sentence1", "sentence2", "label", _NLI2, 128, hf_name="rte"),
        TaskSpec(
            "wnli",
            "sentence1",
            "sentence2",
            "label",
            _BINARY,
            128,
            hf_name="wnli",
            class_names=("not_entailment", "entailment"),
        ),
    ]
}

# GLUE folder names as distributed (SST-2, STS-B, CoLA, ...) map to our short names.
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli"}


def get_task(name: str) -> TaskSpec:
    """Look up a GLUE task by its short or folder name, case-insensitively."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in TASKS:
        raise ConfigError(f"unknown task '{name}'; known: {', '.join(TASKS)}")
    return TASKS[key]
