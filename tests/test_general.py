"""Task-agnostic (general) distillation through a cache, round trip on a tiny plain encoder.

general build (HSK only) -> `fit --mode hsk` (a general student: encoder + its projection) ->
a task cache of the same teacher -> `fit --init pretrained --init-from GENERAL`.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import WORDS, make_bert, write_sst2
from hskcache.build import build_cache
from hskcache.config import BuildConfig
from hskcache.errors import CacheMismatchError, ConfigError
from hskcache.reader import open_cache
from hsktrain.config import FitConfig
from hsktrain.train import fit

SEL = dict(hsk="full", student_layers=2, max_length=16, chunk_rows=16, batch_size=16)
FIT = dict(student="tiny", batch_size=8, buffer_chunks=2, hsk_lr=3e-3)


def losses(out) -> list[float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A 4-layer BERT with no task head (architectures: BertModel), as a sentence encoder."""
    from transformers import AutoTokenizer, BertModel

    root = tmp_path_factory.mktemp("general")
    tuned = make_bert(root / "tuned", layers=4)
    BertModel.from_pretrained(tuned).save_pretrained(root / "encoder")
    AutoTokenizer.from_pretrained(tuned).save_pretrained(root / "encoder")
    return root / "encoder"


def corpus(path, n: int, seed: int):
    rng = np.random.default_rng(seed)
    path.write_text(
        "".join(" ".join(rng.choice(WORDS, rng.integers(3, 12))) + "\n" for _ in range(n))
    )
    return path


def test_general_student_round_trip(tmp_path, encoder):
    general = BuildConfig(
        data=str(corpus(tmp_path / "corpus.txt", 256, 0)),
        out=str(tmp_path / "general"),
        teacher=str(encoder),
        **SEL,
    )
    cache = open_cache(str(build_cache(general, show_progress=False)))
    assert cache.info.data.task_agnostic and cache.info.teacher.head_initialised
    gen = tmp_path / "gen"
    fit(FitConfig(out=str(gen), cache=cache.url, mode="hsk", hsk_epochs=6, **FIT), False)
    first = losses(gen)
    assert first[-1] < 0.5 * first[0]  # general distillation learnt the teacher's states
    # the general student: an encoder checkpoint (no head), the teacher's tokenizer, its projection
    saved = json.loads((gen / "best" / "config.json").read_text())
    assert saved["architectures"] == ["BertModel"] and saved["hidden_size"] == 16
    assert (gen / "best" / "projection.safetensors").is_file()
    assert (gen / "best" / "tokenizer.json").is_file()

    task = BuildConfig(
        data=str(write_sst2(tmp_path / "SST-2")),
        out=str(tmp_path / "task"),
        teacher=str(encoder),
        **SEL,
    )
    task_cache = str(build_cache(task, show_progress=False))
    one = dict(cache=task_cache, mode="hsk", hsk_epochs=1, max_steps=1, **FIT)
    fit(FitConfig(out=str(tmp_path / "sel"), **one), False)
    fit(
        FitConfig(
            out=str(tmp_path / "pre"),
            init="pretrained",
            init_from=str(gen / "best"),
            **one,
        ),
        False,
    )
    from_select, from_general = losses(tmp_path / "sel")[0], losses(tmp_path / "pre")[0]
    # other rows than the general corpus (SST-2 sentences), the same teacher: the general student
    # starts nearer its states than the same shape selected from the teacher
    assert from_general < 0.5 * from_select
    record = json.loads((tmp_path / "pre" / "config.json").read_text())
    assert record["student_init"]["projection"] == f"{gen / 'best'} (saved)"


def test_general_student_refusals(tmp_path, encoder):
    cache = BuildConfig(
        data=str(corpus(tmp_path / "c.txt", 16, 1)),
        out=str(tmp_path / "g"),
        teacher=str(encoder),
        **SEL,
    )
    url = str(build_cache(cache, show_progress=False))
    with pytest.raises(ConfigError) as e:
        fit(
            FitConfig(
                out=str(tmp_path / "o"), cache=url, mode="hsk", dev_data=str(tmp_path), **FIT
            ),
            False,
        )
    assert str(e.value) == (
        f"{url}: a task-agnostic cache trains a general student, which has no task head to score "
        "on --dev-data; drop --dev-data (score the task students started from it with --init "
        "pretrained)"
    )
    # a general student of another vocabulary is refused on a task cache, naming what differs
    other = make_bert(tmp_path / "other", layers=4)
    vocab = other / "vocab.txt"
    words = vocab.read_text().split()
    vocab.write_text("\n".join(words[:5] + words[5:][::-1]) + "\n")
    from transformers import BertTokenizerFast

    from conftest import vocab_dict

    BertTokenizerFast(vocab=vocab_dict(vocab)).save_pretrained(other)
    with pytest.raises(CacheMismatchError, match="tokenizer vocabulary"):
        fit(
            FitConfig(
                out=str(tmp_path / "o2"),
                cache=url,
                mode="hsk",
                init="pretrained",
                init_from=str(other),
                **FIT,
            ),
            False,
        )
