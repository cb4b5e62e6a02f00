"""Loaders: every GLUE layout we ship, generic tables, and each bad input's error."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SENTENCES, require_glue
from hskcache.data import Columns, load_split
from hskcache.errors import ConfigError, DataFormatError


def test_sst2_folder(sst2_dir):
    ex = load_split(str(sst2_dir), None, "dev")
    assert ex.task.name == "sst2" and ex.pairs is None and len(ex) == len(SENTENCES)
    assert ex.texts[0].strip() == SENTENCES[0][0]
    assert ex.labels.tolist() == [y for _, y in SENTENCES]
    assert ex.label_names == ("0", "1")


def test_mrpc_pairs_bom_and_quotes(mrpc_dir):
    ex = load_split(str(mrpc_dir), "mrpc", "train", limit=3)
    assert len(ex) == 3 and ex.pairs is not None
    assert ex.texts[0] == 'the movie was good "'  # bare quote kept, no CSV quoting
    assert ex.pairs[0] == SENTENCES[1][0]
    assert ex.labels.tolist() == [1, 0, 1]


def test_cola_without_header(tmp_path):
    d = tmp_path / "CoLA"
    d.mkdir()
    (d / "train.tsv").write_text("gj04\t1\t\tThe sailors rode.\ngj04\t0\t*\tRode the.\n")
    ex = load_split(str(d), None, "train")
    assert ex.texts == ["The sailors rode.", "Rode the."] and ex.labels.tolist() == [1, 0]


def test_tables_csv_jsonl_parquet(tmp_path):
    rows = [{"q": "a b", "p": "c", "y": "yes"}, {"q": "d", "p": "e f", "y": "no"}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "t.csv").write_text("q,p,y\na b,c,yes\nd,e f,no\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    cols = Columns("q", "p", "y")
    for f in ("t.jsonl", "t.csv", "t.parquet"):
        ex = load_split(str(tmp_path / f), None, "train", cols)
        assert ex.texts == ["a b", "d"] and ex.pairs == ["c", "e f"]
        assert ex.label_names == ("no", "yes") and ex.labels.tolist() == [1, 0]
        assert (
            ex.fingerprint()
            == load_split(str(tmp_path / "t.csv"), None, "train", cols).fingerprint()
        )


def test_regression_table(tmp_path):
    (tmp_path / "s.csv").write_text("sentence1,sentence2,label\na,b,0.5\nc,d,4.25\n")
    ex = load_split(str(tmp_path / "s.csv"), "stsb", "train", Columns(label="label"))
    assert ex.label_names is None and ex.labels.dtype == np.float32
    assert ex.labels.tolist() == [0.5, 4.25]


def test_fingerprint_tracks_content(sst2_dir):
    a = load_split(str(sst2_dir), None, "train")
    b = load_split(str(sst2_dir), None, "train", limit=5)
    assert a.fingerprint() == load_split(str(sst2_dir), None, "train").fingerprint()
    assert a.fingerprint() != b.fingerprint()


def test_errors(tmp_path, sst2_dir):
    with pytest.raises(DataFormatError, match="no such file"):
        load_split(str(tmp_path / "missing.csv"), None, "train")
    with pytest.raises(DataFormatError, match="test.tsv"):
        load_split(str(sst2_dir), None, "test")
    with pytest.raises(DataFormatError, match="no column 'text'"):
        load_split(str(sst2_dir / "train.tsv"), "sst2", "train", Columns(text="text"))
    with pytest.raises(ConfigError, match="unknown task"):
        load_split(str(tmp_path), "nope", "train")
    with pytest.raises(ConfigError, match="pass --task"):
        load_split(str(tmp_path), None, "train")
    bad = tmp_path / "SST-2b"
    bad.mkdir()
    (bad / "train.tsv").write_text("sentence\tlabel\ngood\t7\n")
    with pytest.raises(DataFormatError, match="label '7'"):
        load_split(str(bad), "sst2", "train")
    (bad / "dev.tsv").write_text("sentence\tlabel\ngood\n")
    with pytest.raises(DataFormatError, match=r"dev.tsv:2: expected at least 2 fields"):
        load_split(str(bad), "sst2", "dev")


@pytest.mark.parametrize(
    ("task", "n_dev", "pair"), [("SST-2", 872, False), ("MRPC", 408, True), ("CoLA", 1043, False)]
)
def test_real_glue_dev(task, n_dev, pair):
    ex = load_split(str(require_glue(task)), None, "dev")
    assert len(ex) == n_dev and (ex.pairs is not None) == pair
    assert set(ex.labels.tolist()) == {0, 1}


def test_csv_numbers_stay_text(tmp_path):
    (tmp_path / "n.csv").write_text("text,label\n5,a\n17,b\n")
    ex = load_split(str(tmp_path / "n.csv"), None, "train")
    assert ex.texts == ["5", "17"] and ex.labels.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("s1,s2,label\na,b,1.5\nc,d,\n", "row 2: label is empty; fill or drop the row"),
        ("s1,s2,label\na,b,1.5\nc,d,inf\n", "row 2: regression label inf is not a finite number"),
        ("s1,s2,label\na,b,x\nc,d,\n", "row 2: label is empty; fill or drop the row"),
    ],
)
def test_missing_and_non_finite_labels(tmp_path, content, message):
    (tmp_path / "t.csv").write_text(content)
    task = "stsb" if "1.5" in content else None
    with pytest.raises(DataFormatError) as e:
        load_split(str(tmp_path / "t.csv"), task, "train", Columns("s1", "s2", "label"))
    assert str(e.value) == f"{tmp_path / 't.csv'}: {message}"


def test_nan_label_in_a_glue_tsv_names_the_line(tmp_path):
    d = tmp_path / "STS-B"
    d.mkdir()
    (d / "dev.tsv").write_text("sentence1\tsentence2\tscore\na\tb\t1.5\nc\td\tNaN\n")
    with pytest.raises(DataFormatError) as e:
        load_split(str(d), None, "dev")
    assert str(e.value) == f"{d / 'dev.tsv'}:3: regression label 'NaN' is not a finite number"


def test_limit_below_one():
    with pytest.raises(ConfigError, match=r"^limit 0 must be >= 1"):
        load_split("anything", None, "dev", limit=0)
