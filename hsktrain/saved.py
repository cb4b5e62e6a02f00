"""A saved model folder (`RUN/best`, a fine-tuned teacher) loaded for inference, one way for
`export` and `predict`: checked before its weights load, in eval mode, with the token limit and
task its run recorded (`hsktrain.json`) and the class names its config carries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hskcache.devices import check_device
from hskcache.teacher import check_model_folder, check_token_limit
from hsktrain.checkpoint import refuse_run_folder
from hsktrain.students import check_vocab

DEFAULT_MAX_LENGTH = 128  # a folder no run of ours wrote, and no --max-length


@dataclass
class SavedModel:
    folder: Path
    model: object  # a transformers *ForSequenceClassification, in eval mode
    tokenizer: object
    max_length: int
    task: str | None  # the task its run trained on, when hsktrain wrote the folder

    @property
    def regression(self) -> bool:
        return self.model.config.num_labels == 1

    @property
    def class_names(self) -> list[str]:
        """What each class id is called (`id2label`; HF's LABEL_i when the run knew no names)."""
        id2label = self.model.config.id2label
        return [str(id2label[i]) for i in range(self.model.config.num_labels)]


def load_saved(model_dir: str | Path, device: str = "cpu", max_length: int | None = None):
    """Load a model folder for inference.

    Args:
        model_dir: a `save_pretrained` folder with safetensors weights and its tokenizer.
        device: where the model runs.
        max_length: token limit; default the one its run recorded, else 128.

    Returns:
        A `SavedModel`.

    Raises:
        TeacherError: a run folder (naming the model inside), no config.json, custom code,
            pickle-only weights, fewer token embeddings than tokens.
        ConfigError: a max length past the model's positions, a device torch cannot use.
    """
    # lazy: transformers takes seconds to import; `--help` loads none of it
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    folder = Path(model_dir)
    refuse_run_folder(folder)
    check_model_folder(folder)
    check_device(device)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    record_file = folder / "hsktrain.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    max_length = max_length or record.get("max_length") or DEFAULT_MAX_LENGTH
    check_token_limit(config, max_length)
    tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True, trust_remote_code=False)
    check_vocab(config, tokenizer, str(folder))
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, use_safetensors=True, trust_remote_code=False
    )
    model.float().eval().to(device)
    return SavedModel(folder, model, tokenizer, max_length, record.get("task"))
