"""`datasets` inputs (a `save_to_disk` folder, an in-memory `Dataset` / `DatasetDict`) and the
class names that travel from the data through a cache to a saved model's `id2label`."""

from __future__ import annotations

import json

import datasets
import pytest
import zarr

from conftest import SENTENCES
from hskcache.build import build_cache
from hskcache.config import BuildConfig
from hskcache.data import Columns, load_split
from hskcache.errors import ConfigError, DataFormatError
from hskcache.manifest import MANIFEST_KEY, ManifestView, compute_identity
from hskcache.reader import open_cache

SST2_FEATURES = datasets.Features(
    {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
)


def sst2_dataset(n: int | None = None) -> datasets.Dataset:
    """The rows of conftest's `write_sst2` folder, as a `datasets.Dataset` with a ClassLabel.

    The TSV writes `sentence \\t label` (a space before the tab), so the text keeps it too.
    """
    rows = SENTENCES if n is None else SENTENCES[:n]
    return datasets.Dataset.from_dict(
        {"sentence": [f"{s} " for s, _ in rows], "label": [y for _, y in rows]}, SST2_FEATURES
    )


def test_save_to_disk_folder_is_the_tsv_rows(tmp_path, sst2_dir):
    tsv = load_split(str(sst2_dir), None, "train")
    sst2_dataset().save_to_disk(str(tmp_path / "saved"))
    saved = load_split(str(tmp_path / "saved"), "sst2", "train")
    memory = load_split(sst2_dataset(), "sst2", "train")
    for ex in (saved, memory):
        assert ex.texts == tsv.texts and ex.labels.tolist() == tsv.labels.tolist()
        assert ex.fingerprint() == tsv.fingerprint()
        assert ex.label_names == ("0", "1")
        assert ex.class_names == ("neg", "pos")  # the data's own names win over the task's
    assert tsv.class_names == ("negative", "positive")  # the GLUE card's, for SST-2's 0/1
    assert saved.source == str(tmp_path / "saved")
    assert memory.source == "Dataset (in memory)"


def test_dataset_dict_split_and_limit(tmp_path):
    d = datasets.DatasetDict({"train": sst2_dataset(), "validation": sst2_dataset(3)})
    d.save_to_disk(str(tmp_path / "dd"))
    dev = load_split(str(tmp_path / "dd"), "sst2", "dev")  # dev is the hub's `validation`
    assert dev.texts == [f"{s} " for s, _ in SENTENCES[:3]]
    assert dev.source == f"{tmp_path / 'dd'}:validation"
    assert len(load_split(d, "sst2", "train", limit=4)) == 4
    with pytest.raises(DataFormatError) as e:
        load_split(str(tmp_path / "dd"), "sst2", "test")
    assert str(e.value) == (
        f"{tmp_path / 'dd'}: no split 'test'; the DatasetDict holds ['train', 'validation']; "
        "choose one with --split"
    )


def test_custom_columns_and_class_labels():
    pairs = datasets.Dataset.from_dict(
        {"q": ["a b", "c"], "p": ["d", "e f"], "y": [2, 0]},
        datasets.Features(
            {
                "q": datasets.Value("string"),
                "p": datasets.Value("string"),
                "y": datasets.ClassLabel(names=["no", "maybe", "yes"]),
            }
        ),
    )
    ex = load_split(pairs, None, "train", Columns("q", "p", "y"))
    assert ex.pairs == ["d", "e f"] and ex.labels.tolist() == [2, 0]  # the feature's own ids
    assert ex.label_names == ex.class_names == ("no", "maybe", "yes")
    with pytest.raises(DataFormatError) as e:
        load_split(pairs, "mrpc", "train", Columns("q", "p", "y"))
    assert str(e.value) == (
        "Dataset (in memory): label column has 3 classes ['no', 'maybe', 'yes'], task 'mrpc' "
        "has 2; pass the task these rows are for"
    )
    plain = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, 0]})  # ints, no names
    assert load_split(plain, None, "train").class_names is None
    named = datasets.Dataset.from_dict({"text": ["a", "b"], "label": ["pos", "neg"]})
    assert load_split(named, None, "train").class_names == ("neg", "pos")


def test_bad_dataset_inputs(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_split({"text": ["a"]}, None, "train")
    assert str(e.value) == (
        "data must be a path, a hub name or a datasets.Dataset / DatasetDict, not dict"
    )
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "state.json").write_text("{}")
    with pytest.raises(DataFormatError, match="cannot read as a datasets save_to_disk folder"):
        load_split(str(tmp_path / "broken"), "sst2", "train")
    test_split = datasets.Dataset.from_dict({"sentence": ["a"], "label": [-1]}, SST2_FEATURES)
    assert load_split(test_split, "sst2", "test").labels.tolist() == [-1]
    bad = datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [0, -1]}, SST2_FEATURES)
    with pytest.raises(DataFormatError) as e:
        load_split(bad, "sst2", "train")
    assert str(e.value) == "Dataset (in memory): row 2: label is empty; fill or drop the row"
    cast = datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [0, 7]}).cast(SST2_FEATURES)
    with pytest.raises(DataFormatError) as e:  # `cast` lets a class id past the names through
        load_split(cast, "sst2", "train")
    assert str(e.value) == (
        "Dataset (in memory): row 2: class id 7 is outside the label column's 2 classes"
    )


def build(tiny_bert, data, out) -> ManifestView:
    cfg = BuildConfig(
        data=data,
        out=str(out),
        task="sst2",
        teacher=str(tiny_bert),
        hsk="1l_4t_0.25h",
        max_length=16,
        chunk_rows=8,
        student_layers=2,
    )
    return open_cache(str(build_cache(cfg, show_progress=False))).info


def test_cache_from_a_dataset_has_the_tsv_cache_identity(tmp_path, tiny_bert, sst2_dir):
    sst2_dataset().save_to_disk(str(tmp_path / "saved"))
    tsv = build(tiny_bert, str(sst2_dir), tmp_path / "a")
    saved = build(tiny_bert, str(tmp_path / "saved"), tmp_path / "b")
    memory = build(tiny_bert, sst2_dataset(), tmp_path / "c")
    assert tsv.identity == saved.identity == memory.identity
    assert tsv.data.fingerprint == saved.data.fingerprint == memory.data.fingerprint
    assert tsv.data.class_names == ("negative", "positive")
    assert saved.data.class_names == memory.data.class_names == ("neg", "pos")
    assert tsv.content != saved.content  # the names a saved student reports are content


def test_a_cache_without_class_names_still_opens(tmp_path, fit_world):
    """Caches built before `data.class_names` existed: the field is missing, not null."""
    import shutil

    old = shutil.copytree(fit_world["cache"], tmp_path / "old")
    group = zarr.open_group(str(old), mode="r+")
    m = dict(group.attrs[MANIFEST_KEY])
    del m["data"]["class_names"]
    assert compute_identity(m) == m["identity"]  # the names are not part of the identity
    group.attrs[MANIFEST_KEY] = m
    assert open_cache(str(old)).info.data.class_names is None


def test_config_record_names_an_in_memory_dataset(tmp_path, tiny_bert):
    from hsktrain.config import FitConfig
    from hsktrain.train import fit

    out = tmp_path / "run"
    cfg = FitConfig(
        out=str(out),
        data=sst2_dataset(8),
        task="sst2",
        mode="ce",
        init="pretrained",
        init_from=str(tiny_bert),
        pred_epochs=1,
        batch_size=8,
        max_length=16,
    )
    fit(cfg, show_progress=False)
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["data"] == "Dataset (in memory)"
    saved = json.loads((out / "best" / "config.json").read_text())
    assert saved["id2label"] == {"0": "neg", "1": "pos"}


def test_fit_from_a_cache_saves_the_class_names(tmp_path, fit_world):
    from transformers import pipeline

    from hsktrain.config import FitConfig
    from hsktrain.train import fit

    out = tmp_path / "run"
    cfg = FitConfig(
        out=str(out),
        cache=str(fit_world["cache"]),
        student="tiny",
        hsk_epochs=1,
        pred_epochs=1,
        batch_size=8,
        buffer_chunks=2,
    )
    fit(cfg, show_progress=False)  # no teacher: the names come from the cache's manifest
    classify = pipeline("text-classification", model=str(out / "best"), device="cpu")
    got = classify(["the movie was good", "awful"], top_k=None)
    assert [sorted(s["label"] for s in row) for row in got] == [["negative", "positive"]] * 2
