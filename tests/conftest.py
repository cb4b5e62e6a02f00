"""Shared fixtures: tiny random teachers (BERT and MPNet layouts) and tiny GLUE-format data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

GLUE = Path(
    os.environ.get("HSK_GLUE_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "glue")
)


def require_glue(task: str) -> Path:
    """The shared GLUE folder of a task: skipped locally when absent, an error under CI."""
    folder = GLUE / task
    if not folder.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{folder} missing: CI must provide the shared GLUE data")
        pytest.skip(f"{folder} not present")
    return folder


WORDS = (
    "the a movie film is was good bad great awful not very fun dull plot actors story it this "
    "and but of to i loved hated boring charming funny sad long short"
).split()
SENTENCES = [
    ("the movie was good", 1),
    ("a bad film", 0),
    ("i loved this charming story", 1),
    ("boring and dull", 0),
    ("the actors were not very good", 0),
    ("great fun", 1),
    ("it was a long sad plot but the actors were great", 1),
    ("awful", 0),
    ("this film is funny", 1),
    ("i hated the story of this movie", 0),
    ("short and charming", 1),
    ("the plot was very long and very dull", 0),
    ("not bad", 1),
    ("a great great movie", 1),
    ("dull dull dull", 0),
    ("the film was fun and the story was good", 1),
    ("sad", 0),
    ("funny actors", 1),
    ("i loved it", 1),
    ("boring", 0),
    ("it is not a good film", 0),
    ("charming", 1),
    ("the movie is short but fun", 1),
    ("long and boring plot", 0),
    ("this was very very good", 1),
    ("awful actors and a dull story", 0),
]


def _vocab(path: Path, specials: list[str]) -> Path:
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    path.write_text("\n".join(specials + WORDS + letters + [f"##{c}" for c in letters]) + "\n")
    return path


def vocab_dict(path: Path) -> dict[str, int]:
    # transformers 5 tokenizers take `vocab=` (a dict); `vocab_file=` is silently ignored.
    return {w: i for i, w in enumerate(path.read_text().split())}


def make_bert(
    root: Path, layers: int = 2, hidden: int = 32, heads: int = 4, num_labels: int = 2
) -> Path:
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    vocab = _vocab(root / "vocab.txt", ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok = BertTokenizerFast(vocab=vocab_dict(vocab))
    cfg = BertConfig(
        vocab_size=len(vocab.read_text().split()),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(root)
    tok.save_pretrained(root)
    return root


def make_mpnet(root: Path, layers: int = 2, hidden: int = 32, heads: int = 4) -> Path:
    from transformers import MPNetConfig, MPNetForSequenceClassification, MPNetTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    vocab = _vocab(root / "vocab.txt", ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"])
    tok = MPNetTokenizerFast(vocab=vocab_dict(vocab))
    cfg = MPNetConfig(
        vocab_size=len(vocab.read_text().split()),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=130,
        num_labels=2,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    MPNetForSequenceClassification(cfg).save_pretrained(root)
    tok.save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_mpnet(tmp_path_factory) -> Path:
    return make_mpnet(tmp_path_factory.mktemp("tiny_mpnet"))


def write_sst2(folder: Path, n: int | None = None) -> Path:
    """An SST-2-format folder (header, sentence<TAB>label) with train and dev files."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = SENTENCES if n is None else [SENTENCES[i % len(SENTENCES)] for i in range(n)]
    for split in ("train", "dev"):
        lines = ["sentence\tlabel"] + [f"{s} \t{y}" for s, y in rows]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def write_mrpc(folder: Path) -> Path:
    """An MRPC-format folder: BOM, 5 columns, label first, bare quotes in the text."""
    folder.mkdir(parents=True, exist_ok=True)
    head = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"
    rows = [
        f"{y}\t{i}\t{i + 1}\t{a}\t{b}"
        for i, ((a, y), (b, _)) in enumerate(
            zip(SENTENCES, SENTENCES[1:] + SENTENCES[:1], strict=True)
        )
    ]
    rows[0] = rows[0].replace("good", 'good "')
    for split in ("train", "dev"):
        (folder / f"{split}.tsv").write_text("\n".join([head, *rows]) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def fit_world(tmp_path_factory, tiny_bert) -> dict:
    """One tiny cache the fit, DDP and grouped-batch tests read (48 SST-2-style rows,
    `1l_4t_0.25h`, 6 chunks of 8 rows: 3 for each of two DDP ranks), built once per session.
    Tests that break a cache copy it first."""
    from hskcache.build import build_cache  # lazy: conftest stays cheap for tests without it
    from hskcache.config import BuildConfig

    root = tmp_path_factory.mktemp("fit-world")
    data = write_sst2(root / "SST-2", 48)
    cfg = BuildConfig(
        data=str(data),
        out=str(root / "cache"),
        teacher=str(tiny_bert),
        hsk="1l_4t_0.25h",
        max_length=16,
        chunk_rows=8,
        student_layers=2,
    )
    return {"data": data, "cache": build_cache(cfg, show_progress=False), "teacher": tiny_bert}


@pytest.fixture
def sst2_dir(tmp_path) -> Path:
    return write_sst2(tmp_path / "SST-2")


@pytest.fixture
def mrpc_dir(tmp_path) -> Path:
    return write_mrpc(tmp_path / "MRPC")


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API server (moto in server mode) on loopback for the whole session.

    The AWS_* variables it sets reach s3fs in this process and in every CLI subprocess the
    tests start, so `s3://` URLs resolve to this server; nothing leaves the machine.
    """
    from hsktrain.bench.remote import loopback_s3_server

    with loopback_s3_server() as url:
        yield url


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh, empty bucket on the loopback S3 server; returns its `s3://` URL."""
    import re

    import s3fs

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"t-{name}-{os.getpid()}-{id(request) % 10_000}"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir(name)
    return f"s3://{name}"
