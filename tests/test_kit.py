"""A cache is a complete training kit: fit, eval and export with the teacher folder gone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_build import KILL_SCRIPT, files
from typer.testing import CliRunner

from conftest import make_bert, write_sst2
from hskcache.build import build_cache
from hskcache.cli import app as cache_app
from hskcache.config import BuildConfig
from hskcache.errors import CacheError, ConfigError
from hskcache.reader import open_cache
from hskcache.verify import verify_cache
from hsktrain.cli import app as train_app
from hsktrain.config import FitConfig
from hsktrain.students import build_student, student_from_cache
from hsktrain.train import fit

HSK = "1l_4t_0.25h"
ONE = {"num_hidden_layers": 1, "hidden_size": 8, "num_attention_heads": 2, "intermediate_size": 16}
TWO = {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 8}


def build_args(data: Path, teacher: Path, out: Path | str, *extra: str) -> list[str]:
    return [
        "build",
        "--data",
        str(data),
        "--teacher",
        str(teacher),
        "--out",
        str(out),
        "--hsk",
        HSK,
        "--max-length",
        "16",
        "--chunk-rows",
        "8",
        "--student-layers",
        "2",
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module")
def kit(tmp_path_factory, tiny_bert):
    """A cache built (CLI) from a copy of the teacher, then the copy deleted, as on a
    teammate's machine; and a second cache that bundles the teacher."""
    root = tmp_path_factory.mktemp("kit")
    data = write_sst2(root / "SST-2", 48)
    (root / "one.json").write_text(json.dumps(ONE))
    (root / "two.json").write_text(json.dumps(TWO))
    teacher = root / "tt"
    shutil.copytree(tiny_bert, teacher)
    runner = CliRunner()
    plain = runner.invoke(
        cache_app,
        build_args(
            data, teacher, root / "cache", "--student", "tiny", "--student", str(root / "one.json")
        ),
    )
    bundled = runner.invoke(
        cache_app, build_args(data, teacher, root / "bundled", "--bundle-teacher")
    )
    shutil.rmtree(teacher)
    return {"root": root, "data": data, "plain": plain, "bundled": bundled}


def test_build_says_what_it_stored(kit):
    assert kit["plain"].exit_code == 0, kit["plain"].output
    assert "student inits: tiny (2L-16H), one (1L-8H)" in kit["plain"].output
    assert kit["bundled"].exit_code == 0, kit["bundled"].output
    assert "student inits: tiny (2L-16H)" in kit["bundled"].output  # the 2-layer default
    r = CliRunner().invoke(cache_app, ["inspect", str(kit["root"] / "cache"), "--json"])
    info = json.loads(r.output)["kit"]
    assert [s["name"] for s in info["students"]] == ["tiny", "one"]
    assert info["students"][1]["shape"] == ONE and info["students"][1]["teacher_layers"] == [1]
    assert info["tokenizer"]["files"] == ["tokenizer.json", "tokenizer_config.json"]
    assert info["teacher_bundled"] is False
    r = CliRunner().invoke(cache_app, ["inspect", str(kit["root"] / "bundled")])
    assert "teacher kit  bundled (" in r.output


def test_fit_and_eval_with_the_teacher_folder_deleted(kit, tmp_path):
    """The builder's teacher folder is gone: tokenizer and init come from the cache."""
    from hsktrain.evaluate import evaluate_checkpoint

    runner, d = CliRunner(), str(kit["data"])
    assert not (kit["root"] / "tt").exists()
    run = tmp_path / "run"
    r = runner.invoke(
        train_app,
        [
            "fit",
            "--cache",
            str(kit["root"] / "cache"),
            "--student",
            "tiny",
            "--dev-data",
            d,
            "--out",
            str(run),
            "--hsk-epochs",
            "1",
            "--pred-epochs",
            "1",
            "--batch-size",
            "8",
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    record = json.loads((run / "config.json").read_text())
    assert record["student_init"]["stored"] == "tiny"
    assert record["student_init"]["teacher_layers"] == [0, 1]
    r = runner.invoke(train_app, ["eval", str(run / "best"), "--data", d, "--json"])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["examples"] == 48 and 0.0 <= result["metrics"]["accuracy"] <= 1.0
    scores = evaluate_checkpoint(str(run / "best"), d, None, "dev", None, None, 16, "cpu")
    assert scores["metrics"] == result["metrics"]
    # --init random needs only the teacher's config, which the cache carries too
    cfg = FitConfig(
        cache=str(kit["root"] / "cache"),
        out=str(tmp_path / "r"),
        student="tiny",
        init="random",
        mode="pred",
        pred_epochs=1,
        batch_size=8,
    )
    assert fit(cfg, show_progress=False).last.is_dir()


@pytest.mark.parametrize("seed", [0, 3])
def test_stored_init_is_fits_selection(kit, tiny_bert, seed):
    """The same tensors `build_student` selects from the teacher folder, for any fit seed."""
    cache = open_cache(kit["root"] / "cache")
    for shape in ("tiny", str(kit["root"] / "one.json")):
        for init in ("select", "random"):
            got, info = student_from_cache(cache, init, shape, 2, seed)
            want, _ = build_student(init, str(tiny_bert), shape, 2, seed)
            g, w = got.state_dict(), want.state_dict()
            assert list(g) == list(w)
            assert all(torch.equal(g[k], w[k]) for k in w), (shape, init)
    other, _ = student_from_cache(cache, "random", "tiny", 2, seed + 1)
    assert not torch.equal(other.state_dict()["classifier.weight"], g["classifier.weight"])


def test_a_shape_the_cache_lacks_is_named(kit, tmp_path):
    cache = str(kit["root"] / "cache")
    with pytest.raises(ConfigError) as e:
        fit(FitConfig(cache=cache, out=str(tmp_path / "o"), student="mini", mode="pred"))
    assert str(e.value) == (
        f"{cache}: the cache holds no init for student 'mini' (it holds: tiny (2L-16H), "
        "one (1L-8H)); rebuild it with `hskcache build --student mini` (or --bundle-teacher, "
        "which serves any shape), or pass --init-from TEACHER_DIR, or use --init random"
    )
    assert not (tmp_path / "o").exists()


def test_altered_assets_are_named(kit, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(kit["root"] / "cache", broken)
    weights = broken / "assets" / "students" / "tiny" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    (broken / "assets" / "tokenizer" / "tokenizer.json").unlink()
    assert verify_cache(str(broken)) == [
        "object 'assets/students/tiny/model.safetensors' does not match its recorded sha256 "
        "(altered, or swapped with another)",
        "object 'assets/tokenizer/tokenizer.json' is missing",
    ]
    r = CliRunner().invoke(cache_app, ["verify", str(broken), "--quiet"])
    assert r.exit_code == 1 and "assets/students/tiny/model.safetensors" in r.output
    # without the verify pass, reading the asset still checks it
    cfg = dict(cache=str(broken), out=str(tmp_path / "o"), student="tiny", verify=False)
    with pytest.raises(CacheError, match="object 'assets/tokenizer/tokenizer.json' is missing"):
        fit(FitConfig(**cfg), show_progress=False)
    shutil.copy(
        kit["root"] / "cache" / "assets" / "tokenizer" / "tokenizer.json",
        broken / "assets" / "tokenizer" / "tokenizer.json",
    )
    with pytest.raises(CacheError, match="model.safetensors' does not match its recorded sha256"):
        fit(FitConfig(**cfg), show_progress=False)


def test_bundled_teacher_round_trip(kit, tiny_bert, tmp_path):
    from hskcache.teacher import load_teacher

    bundled = open_cache(kit["root"] / "bundled")
    assert bundled.manifest["identity"] != open_cache(kit["root"] / "cache").manifest["identity"]
    runner = CliRunner()
    out = tmp_path / "teacher"
    r = runner.invoke(cache_app, ["export-teacher", str(kit["root"] / "bundled"), str(out)])
    assert r.exit_code == 0, r.output
    assert load_teacher(str(out), 2).weights_sha256 == bundled.manifest["teacher"]["weights_sha256"]
    r = runner.invoke(cache_app, ["export-teacher", str(kit["root"] / "bundled"), str(out)])
    assert r.exit_code == 1 and f"{out}: exists and is not an empty folder" in r.output
    r = runner.invoke(
        cache_app, ["export-teacher", str(kit["root"] / "cache"), str(tmp_path / "x")]
    )
    assert r.exit_code == 1 and "bundles no teacher (built without --bundle-teacher)" in r.output
    # a shape the cache did not store is selected from the bundled teacher
    two = str(kit["root"] / "two.json")
    got, info = student_from_cache(bundled, "select", two, 2, 0)
    want, _ = build_student("select", str(tiny_bert), two, 2, 0)
    assert info["source"].endswith("(bundled teacher)")
    assert all(torch.equal(got.state_dict()[k], v) for k, v in want.state_dict().items())


def test_kill_then_resume_with_assets_is_byte_identical(tmp_path, sst2_dir, tiny_bert):
    kw = dict(
        data=str(sst2_dir),
        teacher=str(tiny_bert),
        hsk=HSK,
        max_length=16,
        chunk_rows=4,
        chunks_per_shard=2,
        batch_size=3,
        student_layers=2,
        bundle_teacher=True,
    )
    straight = build_cache(BuildConfig(out=str(tmp_path / "a"), **kw), show_progress=False)
    killed = BuildConfig(out=str(tmp_path / "b"), **kw)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, json.dumps(killed.__dict__), "22"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == -9, proc.stderr
    build_cache(killed, show_progress=False)
    got = files(Path(killed.out))
    assert (
        "assets/students/tiny/model.safetensors" in got
        and "assets/teacher/model.safetensors" in got
    )
    assert got == files(straight)
    assert verify_cache(killed.out) == []


def test_default_and_bad_students(tmp_path, sst2_dir, tiny_bert):
    runner = CliRunner()
    for teacher, depth, why in (
        (tiny_bert, "3", "no preset is 3 layers deep"),
        (
            make_bert(tmp_path / "t3", layers=3),
            "4",
            "the default 'full4' (4L, the teacher's width) cannot be selected from this 3L-32H "
            "teacher",
        ),
    ):
        args = build_args(sst2_dir, teacher, tmp_path / f"c{depth}")
        args[args.index("--student-layers") + 1] = depth
        r = runner.invoke(cache_app, args)
        assert r.exit_code == 0, r.output
        assert (
            f"no student init stored ({why}): add --student NAME_OR_JSON, or fit with --init "
            "random or --init-from TEACHER_DIR" in r.output.replace("\n", " ")
        )
    r = runner.invoke(
        cache_app, [*build_args(sst2_dir, tiny_bert, tmp_path / "d"), "--student", "mini"]
    )
    assert r.exit_code == 1
    assert "error: --student mini: a 4-layer student cannot be selected from a 2-layer teacher" in (
        r.output.replace("\n", " ")
    )
    assert not (tmp_path / "d").exists()


def test_fit_from_object_storage_with_no_teacher(tmp_path, sst2_dir, tiny_bert, s3_bucket):
    """A teammate's view: only the cache's URL, no teacher folder anywhere."""
    teacher = tmp_path / "tt"
    shutil.copytree(tiny_bert, teacher)
    url = f"{s3_bucket}/c.zarr"
    r = CliRunner().invoke(cache_app, build_args(sst2_dir, teacher, url))
    assert r.exit_code == 0, r.output
    shutil.rmtree(teacher)
    cfg = FitConfig(
        cache=url,
        out=str(tmp_path / "run"),
        student="tiny",
        mode="pred",
        pred_epochs=1,
        batch_size=8,
        dev_data=str(sst2_dir),
    )
    result = fit(cfg, show_progress=False)
    assert result.best is not None and (result.best / "tokenizer.json").is_file()
