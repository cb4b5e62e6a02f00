"""hsktrain's refusals of the bad-input campaign: a study table that would be counted wrong or
crash the report, study files that are not UTF-8, outputs that cannot be written, student inits
that cannot work (pickle weights, too few token embeddings, custom code, a run folder), and a
rank that died under torchrun. Each is one line (docs/errors.md lists them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_bad_inputs import error_line, evaluate
from test_sweep import fake_rows
from typer.testing import CliRunner

from hskcache.cli import app as hskcache_app
from hskcache.distributed import World
from hskcache.errors import TeacherError
from hsktrain.cli import app
from hsktrain.config import FitConfig
from hsktrain.ddp import peer_failure
from hsktrain.study.tables import results_table
from hsktrain.train import fit

runner = CliRunner()
FIT = ["--student", "tiny", "--hsk-epochs", "1", "--pred-epochs", "1", "--batch-size", "8"]


def hsktrain(*args) -> str:
    """The one error line of a refused `hsktrain` command."""
    return error_line(runner.invoke(app, [str(a) for a in args]))


def study(root: Path, name: str = "study") -> Path:
    """A study folder of 20 runs (10 arms x 2 seeds) in results.csv, lines 2..21."""
    folder = root / name
    for row in fake_rows():
        results_table(folder).append(row)
    return folder


# ---- results.csv: each run once, every value readable ---------------------------------------


def test_a_duplicate_run_is_refused_not_counted_as_a_seed(tmp_path):
    """A copied row made `ce` n=3 of 2 seeds, and a conflicting one moved its mean."""
    a, b = study(tmp_path, "a"), study(tmp_path, "b")
    results_table(a).append(fake_rows()[0] | {"dev_accuracy": 0.5})  # ce seed 0 again: line 22
    want = (
        f"{a / 'results.csv'}:22: duplicates the run of line 2 (task sst2, teacher t@abc, "
        "config ce, seed 0); remove one of them"
    )
    assert hsktrain("report", a) == want
    assert hsktrain("compare", a, b) == want


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"sst2,t@abc,6\r\n", "has 3 fields, the header 29; fix or remove the line"),
        (None, "dev_accuracy 'good' is not a number; fix or remove the line"),
        (b"sst2,t\xff@abc\r\n", "not UTF-8 (byte 0xff); re-save the file as UTF-8"),
    ],
)
def test_a_malformed_results_line_is_named(tmp_path, line, message):
    s = study(tmp_path)
    table = results_table(s)
    if line is None:
        table.append(fake_rows()[0] | {"seed": 7, "dev_accuracy": "good"})
    else:
        with table.path.open("ab") as f:
            f.write(line)
    assert hsktrain("report", s) == f"{table.path}:22: {message}"


def test_a_study_file_that_is_not_utf8_names_its_line(tmp_path):
    toml = tmp_path / "study.toml"
    toml.write_bytes(b'study = "s"\ntasks = ["SST-2"]\n# caf\xe9\n')
    want = f"{toml}:3: not UTF-8 (byte 0xe9); re-save the file as UTF-8"
    assert hsktrain("sweep", "--config", toml, "--dry-run") == want


# ---- outputs: checked before any work -------------------------------------------------------


def test_an_output_that_cannot_be_written_is_one_line(tmp_path, fit_world):
    a, b = study(tmp_path, "a"), study(tmp_path, "b")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert hsktrain("compare", a, b, "--out", folder) == (
        f"{folder}: --out is a folder; give a file path (or move the folder away)"
    )
    assert hsktrain("compare", a, b, "--out", "/proc/x/report.md") == (
        "/proc/x/report.md: --out cannot be written: nothing can be created in /proc (No such "
        "file or directory); pick a place you can write to"
    )
    assert hsktrain("bench", "step", "--results", "/proc/x/r.md") == (
        "/proc/x/r.md: --results cannot be written: nothing can be created in /proc (No such "
        "file or directory); pick a place you can write to"
    )
    assert hsktrain("fit", "--cache", fit_world["cache"], "--out", "/sys/foo/out", *FIT) == (
        "/sys/foo/out: --out cannot be written: nothing can be created in /sys (Operation not "
        "permitted); pick a place you can write to"
    )
    (a / "README.md").mkdir()
    assert hsktrain("report", a) == (
        f"{a / 'README.md'}: the report is a folder; give a file path (or move the folder away)"
    )


# ---- student inits --------------------------------------------------------------------------


def test_a_pickle_student_init_is_refused(tmp_path, fit_world):
    pickled = tmp_path / "pickled"
    shutil.copytree(fit_world["teacher"], pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    out = tmp_path / "run"
    args = ["fit", "--data", fit_world["data"], "--mode", "ce", "--out", out, "--init"]
    assert hsktrain(*args, "pretrained", "--init-from", pickled, "--pred-epochs", "1") == (
        f"{pickled}: no *.safetensors weights; pickle checkpoints are refused, re-save with "
        "save_pretrained(safe_serialization=True)"
    )
    assert not out.exists()


def test_fewer_token_embeddings_than_tokens_is_refused(tmp_path, fit_world):
    """An IndexError in the embedding lookup of the first step (or eval batch) before."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    small = tmp_path / "small"
    model = AutoModelForSequenceClassification.from_pretrained(fit_world["teacher"])
    model.resize_token_embeddings(20)  # the tokenizer has 87 tokens
    model.save_pretrained(small)
    AutoTokenizer.from_pretrained(fit_world["teacher"]).save_pretrained(small)
    want = (
        f"{small}: the model has 20 token embeddings but its tokenizer has 87 tokens; use the "
        "tokenizer it was trained with, or resize it (model.resize_token_embeddings("
        "len(tokenizer))) and save it again"
    )
    out = tmp_path / "run"
    args = ["fit", "--data", fit_world["data"], "--mode", "ce", "--out", out, "--init"]
    assert hsktrain(*args, "pretrained", "--init-from", small, "--pred-epochs", "1") == want
    assert not out.exists()  # checked before the run folder is made
    assert evaluate(small, fit_world["data"]) == want


def test_a_student_shape_asking_for_custom_code_is_refused(tmp_path, fit_world):
    """Its fields went into the student's config.json: best/ carried the auto_map on."""
    shape = tmp_path / "shape.json"
    fields = {"num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2}
    shape.write_text(json.dumps(fields | {"auto_map": {"AutoModel": "evil.EvilModel"}}))
    out = tmp_path / "run"
    args = ["fit", "--cache", fit_world["cache"], "--out", out, *FIT, "--student", shape]
    assert hsktrain(*args) == (
        f"{shape}: has an auto_map (custom Python code); refused: only built-in transformers "
        "families load, and a model's own code never runs"
    )
    assert not out.exists()
    built = tmp_path / "cache"
    build = ["build", "--data", fit_world["data"], "--teacher", fit_world["teacher"], "--out"]
    r = runner.invoke(hskcache_app, [str(a) for a in [*build, built, "--student", shape]])
    assert error_line(r) == f"{shape}: has an auto_map (custom Python code); refused: " + (
        "only built-in transformers families load, and a model's own code never runs"
    )
    assert not built.exists()  # refused before a cache could store it


def test_a_fit_config_that_is_not_utf8_names_its_line(tmp_path, fit_world):
    toml = tmp_path / "fit.toml"
    toml.write_bytes(b'student = "tiny"\n# caf\xe9\n')
    want = f"{toml}:2: not UTF-8 (byte 0xe9); re-save the file as UTF-8"
    assert hsktrain("fit", "--config", toml, "--cache", fit_world["cache"], "--out", "x") == want


@pytest.fixture(scope="module")
def real_run(fit_world, tmp_path_factory) -> Path:
    """The folder a tiny `hsktrain fit --out RUN` writes: best/, last/, config.json, its log."""
    out = tmp_path_factory.mktemp("real-run") / "run"
    cfg = FitConfig(
        out=str(out),
        cache=str(fit_world["cache"]),
        student="tiny",
        hsk_epochs=1,
        pred_epochs=1,
        batch_size=8,
        dev_data=str(fit_world["data"]),
    )
    fit(cfg, show_progress=False)
    return out


def test_a_run_folder_as_init_names_its_best_model(tmp_path, fit_world, real_run):
    out = tmp_path / "run"
    args = ["fit", "--cache", fit_world["cache"], "--out", out, *FIT, "--init-from", real_run]
    assert hsktrain(*args) == (
        f"{real_run}: a run folder, not a model folder; did you mean {real_run / 'best'}"
    )
    assert not out.exists()


def test_a_run_folder_without_best_is_named_as_one(tmp_path, fit_world, real_run):
    kept = tmp_path / "kept"  # what a sweep keeps of a run: its record and log
    kept.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(real_run / name, kept)
    assert evaluate(kept, fit_world["data"]) == (
        f"{kept}: a run folder, not a model folder; it keeps no best/ model (a --mode hsk run, "
        "or a sweep's run without keep_checkpoints); pass a model folder"
    )


# ---- torchrun: a rank that died --------------------------------------------------------------


def test_a_collective_whose_peer_died_is_one_line():
    """What rank 0 raised when rank 1 was killed with -9 mid-step (gloo, CPU), measured."""
    gloo = RuntimeError(
        "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
        "[127.0.0.1]:22942: Connection reset by peer. This is typically caused by a remote "
        "worker hanging or bugs in the application."
    )
    assert str(peer_failure(gloo, World(0, 2))) == (
        "rank 0: another rank stopped (Read error [127.0.0.1]:22942: Connection reset by peer); "
        "see its output for why, then rerun the same command with --resume (last/ holds the "
        "last complete checkpoint)"
    )
    dist_error = torch.distributed.DistBackendError("NCCL communicator was aborted on rank 1")
    assert "another rank stopped (NCCL communicator" in str(peer_failure(dist_error, World(1, 2)))
    # one process, or another failure: stays what it was
    assert peer_failure(gloo, World()) is None
    assert peer_failure(RuntimeError("mat1 and mat2 shapes differ"), World(0, 2)) is None


def test_a_stored_config_asking_for_custom_code_is_refused(tmp_path, monkeypatch):
    """A cache's stored config.json (a crafted cache's) is checked as a model folder's is."""
    from hsktrain import students

    def materialise(cache, files, folder):
        (folder / "config.json").write_text(json.dumps({"model_type": "bert", "auto_map": {}}))
        return folder

    monkeypatch.setattr(students, "materialise", materialise)
    cache = type("Cache", (), {"url": "s3://b/c"})()
    with pytest.raises(TeacherError) as e:
        students._stored_config(cache, "assets/teacher/config.json")
    assert str(e.value).startswith("s3://b/c/assets/teacher/config.json: has an auto_map")


# ---- a pretrained student's tokenizer against the cache's ---------------------------------------


def test_a_pretrained_student_of_the_caches_tokenizer_is_taken(real_run, fit_world, tmp_path):
    """Its saved tokenizer carries the padding and truncation settings encoding left on it; the
    ids are the cache's all the same (it was refused as another tokenizer)."""
    saved = json.loads((real_run / "best" / "tokenizer.json").read_text())
    assert saved["padding"] is not None or saved["truncation"] is not None  # the case at hand
    run = dict(hsk_epochs=1, pred_epochs=1, batch_size=8, max_steps=1)
    init = dict(init="pretrained", init_from=str(real_run / "best"))
    cfg = FitConfig(out=str(tmp_path / "again"), cache=str(fit_world["cache"]), **init, **run)
    assert fit(cfg, show_progress=False).last.is_dir()  # trained a step, saved it


def test_a_pretrained_student_of_another_vocabulary_is_refused(tiny_mpnet, fit_world, tmp_path):
    out = tmp_path / "run"
    init = ["--init", "pretrained", "--init-from", tiny_mpnet]
    line = hsktrain("fit", "--cache", fit_world["cache"], *init, "--out", out, *FIT[2:])
    assert line.startswith(
        "cache mismatch on 'tokenizer vocabulary (5 of 87 tokens have other ids)': expected '"
    )
    assert line.endswith(
        f"; the student's tokenizer ({tiny_mpnet}) would read the cache's token ids as other "
        "tokens; use a student of the cache's teacher family and vocabulary, or rebuild the "
        "cache with the student's tokenizer"
    )
    assert not out.exists()


def test_tokenizer_difference_names_what_changes_ids(tiny_bert):
    from transformers import AutoTokenizer

    from hskcache.teacher import tokenizer_difference

    a = AutoTokenizer.from_pretrained(tiny_bert)
    used = AutoTokenizer.from_pretrained(tiny_bert)
    used(["a movie"], truncation=True, max_length=8, padding="max_length")  # leaves settings
    assert tokenizer_difference(a, used) is None
    other_pad = AutoTokenizer.from_pretrained(tiny_bert, pad_token="[MASK]")
    assert tokenizer_difference(a, other_pad) == "special tokens (pad_token)"
    cased = AutoTokenizer.from_pretrained(tiny_bert, do_lower_case=False)
    assert tokenizer_difference(a, cased) == "normaliser, pre-tokeniser or post-processor"
