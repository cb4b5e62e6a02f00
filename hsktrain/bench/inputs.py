"""What a bench runs on when it brings its own inputs: teachers of a named shape (random weights,
or a real pretrained one), SST-2-format rows of random words at an exact length, and a cache of
them built without progress bars. `bench step`, `bench reader` and the RSS probe share them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hskcache.build import build_cache
from hskcache.config import BuildConfig
from hskcache.errors import TeacherError
from hskcache.teacher import default_teacher_path

TEACHERS = {  # random-weight teacher shapes; None = a real pretrained teacher (`real_teacher`)
    "bert-base": {
        "num_hidden_layers": 12,
        "hidden_size": 768,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "tiny": {
        "num_hidden_layers": 2,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "intermediate_size": 64,
    },
    "minilm-shape": {  # MiniLM-L6's shape (the demo's teacher): `bench reader`'s caches
        "num_hidden_layers": 6,
        "hidden_size": 384,
        "num_attention_heads": 12,
        "intermediate_size": 1536,
    },
    "minilm": None,
    "mpnet": None,
}
# The real 12L-768 MPNet, assembled by `make mpnet` (relative to the repository root, where
# `make bench-mpnet` runs).
MPNET_DIR = Path("models/all-mpnet-base-v2")


def make_teacher(kind: str, folder: Path, seed: int = 0) -> tuple[str, bool]:
    """A teacher folder for `kind`; returns (path, random_weights)."""
    # lazy: transformers takes seconds to import; commands that load no model skip it
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    if TEACHERS[kind] is None:
        return real_teacher(kind), False
    # BERT uncased, 30522
    tok = AutoTokenizer.from_pretrained(default_teacher_path(), trust_remote_code=False)
    config = BertConfig(
        vocab_size=tok.vocab_size, max_position_embeddings=512, num_labels=2, **TEACHERS[kind]
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder), True


def real_teacher(kind: str) -> str:
    """The folder of a real pretrained teacher: the MiniLM-L6 package, or the assembled MPNet.

    Raises:
        TeacherError: the MPNet folder is missing (one line naming `make mpnet`).
    """
    if kind == "minilm":
        return str(default_teacher_path())
    if not (MPNET_DIR / "config.json").is_file():
        raise TeacherError(
            f"{MPNET_DIR}: no MPNet teacher there (no config.json); run `make mpnet` in the "
            "repository root first (it assembles all-mpnet-base-v2 from PyPI, about 420 MB)"
        )
    return str(MPNET_DIR)


def synthetic_sst2(folder: Path, rows: int, seq: int, seed: int = 0) -> str:
    """SST-2-format rows of random vocabulary words, each longer than `seq` tokens."""
    # lazy: transformers takes seconds to import; commands that load no model skip it
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_teacher_path(), trust_remote_code=False)
    vocab = tok.get_vocab()
    words = sorted(w for w in vocab if w.isalpha() and w.islower() and len(w) > 2)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["sentence\tlabel"] + [
        " ".join(rng.choice(words, seq)) + f"\t{rng.integers(2)}" for _ in range(rows)
    ]
    for split in ("train", "dev"):
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return str(folder)


def synthetic_cache(data: str, out: Path, teacher: str, timings: dict | None = None, **fields):
    """`hskcache build` of the synthetic rows `data` into `out` (overwritten), no progress bars;
    `fields` are the BuildConfig's other settings."""
    build_cache(
        BuildConfig(
            data=data, task="sst2", out=str(out), teacher=teacher, overwrite=True, **fields
        ),
        show_progress=False,
        timings=timings,
    )
