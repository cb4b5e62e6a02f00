"""A study's extra teacher-labelled rows (`augment`, `labelled`, the `extra_rows` axis): which
arms run, which caches they read and how those are built, what the table records, what the dry
run counts, and that a rerun skips finished runs. Tiny teacher, tiny GLUE-format folders."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace

import pytest

from conftest import make_bert, write_sst2
from hskcache.devices import device_name
from hskcache.errors import ConfigError
from hskcache.reader import open_cache
from hsktrain.study.caches import cache_plan
from hsktrain.study.estimate import dry_run
from hsktrain.study.grid import Grid, load_grid, parse_flags
from hsktrain.study.report import write_report
from hsktrain.study.runs import Rows, config_rows
from hsktrain.study.sweep import plan_sweep, run_sweep, train_run
from hsktrain.study.tables import builds_table, results_table

PLAIN = "1l_2t_0.5h/attention-no-sep/magnitude/l_top1"

CPU = device_name("cpu")  # the tables' device of this machine's work


def grid_of(tmp_path, teacher, n: int = 20, **kw) -> Grid:
    data = write_sst2(tmp_path / "SST-2", n)
    values = dict(
        study=str(tmp_path / "study"),
        tasks=[str(data)],
        teacher=str(teacher),
        student="tiny",
        configs=["1l_2t_0.5h"],
        baselines=["ce", "pred"],
        seeds=[0],
        hsk_epochs=1,
        pred_epochs=1,
        chunk_rows=4,
        fit={"max_length": 16, "batch_size": 4},
    )
    return Grid(**{**values, **kw})


def fake_runner(calls: list):
    def runner(run, ctx):
        calls.append(run.config)
        return {"metrics": {"accuracy": 0.5 + len(calls) / 100}, "train_seconds": 2.0}

    return runner


def test_the_extra_rows_axis_runs_every_kd_arm_twice_and_ce_once(tmp_path, tiny_bert):
    grid = grid_of(tmp_path, tiny_bert, augment=2, extra_rows=[False, True], seeds=[0, 1])
    sweep = plan_sweep(grid, train=False, show_progress=False, say=lambda _: None)
    assert [(r.config, r.seed) for r in sweep.runs] == [
        ("ce", 0),
        ("pred", 0),
        (PLAIN, 0),
        ("pred+augment2", 0),
        (f"{PLAIN}+augment2", 0),
        ("ce", 1),
        ("pred", 1),
        (PLAIN, 1),
        ("pred+augment2", 1),
        (f"{PLAIN}+augment2", 1),
    ]
    assert config_rows(f"{PLAIN}+augment2+labelled8") == Rows(2, 8)
    assert config_rows("ce") == Rows() and Rows(0, 8).name == "labelled8"
    # without the axis every KD arm has the extra rows; CE-only never does
    only = plan_sweep(replace(grid, seeds=[0], extra_rows=[True]), False, False, lambda _: None)
    assert [r.config for r in only.runs] == ["ce", "pred+augment2", f"{PLAIN}+augment2"]


def test_bad_extra_rows_settings_are_all_named_at_once(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text(
        'study = "s"\ntasks = ["SST-2"]\nlimit = 100\nlabelled = 100\naugment = -1\n'
        "width = { fractions = [0.5], strategies = ['threshold'] }\n"
    )
    with pytest.raises(ConfigError) as e:
        load_grid(str(toml), {})
    assert str(e.value) == (
        f"{toml}: augment must be >= 0 (variants per row); labelled 100 >= limit 100: no row is "
        "left unlabelled; lower labelled or raise the limit; width.strategies 'threshold' "
        "trains online, without a cache's extra rows; drop it or set extra_rows = [false]"
    )
    toml.write_text('study = "s"\ntasks = ["SST-2"]\nextra_rows = [false, true]\nlabelled = 0\n')
    with pytest.raises(ConfigError) as e:
        load_grid(str(toml), {})
    assert str(e.value) == f"{toml}: labelled must be >= 1"
    with pytest.raises(ConfigError) as e:
        load_grid(None, {"study": "s", "tasks": ["SST-2"], "extra_rows": [False, True]})
    assert (
        str(e.value) == "extra_rows = [false, true] needs augment or labelled (the extra rows) set"
    )
    assert parse_flags({"extra_rows": "false, TRUE"})["extra_rows"] == [False, True]
    with pytest.raises(ConfigError) as e:
        parse_flags({"extra_rows": "true,yes"})
    assert str(e.value) == "--extra-rows: 'yes' is not true or false"


def test_augmented_and_plain_caches_are_built_apart_and_never_derived_from_each_other(tmp_path):
    # 4 teacher layers: l_top 3 pairs the tiny student's 3 states with 3 distinct teacher states
    grid = grid_of(
        tmp_path,
        make_bert(tmp_path / "teacher", layers=4),
        augment=1,
        extra_rows=[False, True],
        baselines=["ce", "pred"],
        configs=["full", "1l_2t_0.5h"],
    )
    sweep = plan_sweep(grid, train=True, show_progress=False, say=lambda _: None)
    caches = {r.config: sweep.ctx.cache_for(r) for r in sweep.runs}
    with open(tmp_path / "study" / "builds.csv") as f:
        builds = [(b["how"], b["cache"], b["rows"], b["source"]) for b in csv.DictReader(f)]
    full, small = "full-left-magnitude-l_top3", "1l_2t_0.5h-attention-no-sep-magnitude-l_top3"
    assert [b[:3] for b in builds] == [
        ("floor", "one-answer", "20"),  # the dev rows'
        ("build", small, "20"),
        ("build", full, "20"),
        ("build", f"{small}-augment1", "40"),
        ("build", f"{full}-augment1", "40"),
    ]
    assert {b[3] for b in builds[1:]} == {grid.teacher}  # each from the teacher, none derived
    top3 = PLAIN.replace("l_top1", "l_top3")
    aug = open_cache(str(caches[f"{top3}+augment1"])).info
    plain = open_cache(str(caches[top3])).info
    assert aug.data.augment["n"] == 1 and aug.counts.num_unlabelled == 20
    assert plain.data.augment is None and plain.counts.num_unlabelled == 0
    assert aug.identity != plain.identity
    # the baselines read their rows' smallest cache; CE-only the plain one
    assert caches["ce"] == caches["pred"] == caches[top3]
    assert caches["pred+augment1"] == caches[f"{top3}+augment1"]


def test_a_labelled_study_trains_ce_on_the_labelled_rows_alone(tmp_path):
    """`labelled = 8` of 20 rows: the KD arms with the extra rows read all 20 (12 unlabelled),
    CE-only reads the cache's 8 labelled ones, and the table's limit says which rows each read."""
    teacher = make_bert(tmp_path / "teacher", layers=4)
    grid = grid_of(tmp_path, teacher, labelled=8, limit=20, baselines=["ce"], configs=["full"])
    sweep = plan_sweep(grid, train=True, show_progress=False, say=lambda _: None)
    ce, full = sweep.runs
    assert (ce.config, full.config) == ("ce", "full/-/-/l_top3+labelled8")
    info = open_cache(str(sweep.ctx.cache_for(full))).info
    assert (info.counts.num_examples, info.counts.num_unlabelled) == (20, 12)
    assert sweep.ctx.cache_for(ce) == sweep.ctx.cache_for(full)  # its only cache
    train_run(ce, sweep.ctx)
    log = (sweep.ctx.run_dir(ce) / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(x) for x in log if '"loss"' in x]
    assert len(steps) == 2 * 8 // 4  # 2 epochs of 8 labelled rows, batch 4

    run_sweep(grid, fake_runner([]), show_progress=False, say=lambda _: None)
    rows = results_table(grid.study).rows()
    assert [(r["config"], r["limit"]) for r in rows] == [
        ("ce", "8"),
        ("full/-/-/l_top3+labelled8", "20"),
    ]
    # without the extra rows the study reads the 8 labelled rows alone, teacher pass included
    plain = replace(grid, extra_rows=[False])
    cache = plan_sweep(plain, True, False, lambda _: None)
    full_plain = cache.runs[1]
    info = open_cache(str(cache.ctx.cache_for(full_plain))).info
    assert (full_plain.config, info.counts.num_examples, info.counts.num_unlabelled) == (
        "full/-/-/l_top3",
        8,
        0,
    )


def test_dry_run_counts_the_extra_rows_and_a_rerun_skips_finished_runs(
    tmp_path, tiny_bert, monkeypatch
):
    grid = grid_of(tmp_path, tiny_bert, n=26, augment=2, extra_rows=[False])
    calls: list = []
    run_sweep(grid, fake_runner(calls), show_progress=False, say=lambda _: None)
    assert calls == ["ce", "pred", PLAIN]

    # 2 s for 2 epochs of 26 rows: 1/26 s per row and epoch; an augmented arm reads 3 x 26;
    # the teacher labelled 26 rows in 13 s, and the one augmented build labels 78. Its disk:
    # builds of its selection took 2.6 GB at 26 rows and 4.6 GB at 52 (a line: 6.6 GB at 78)
    both = replace(grid, extra_rows=[False, True])
    sweep = plan_sweep(both, False, False, lambda _: None)
    run = next(r for r in sweep.pending if r.arm.kind == "hsk")
    name = sweep.ctx.cache_dir(run.task, cache_plan(run.arm)).name
    assert name.endswith("-augment2")
    row = {"task": "sst2", "cache": name.removesuffix("-augment2"), "how": "build"}
    builds = builds_table(grid.study)
    builds.append(row | {"rows": 26, "seconds": 13.0, "device": CPU, "bytes": 2_600_000_000})
    builds.append(row | {"rows": 52, "bytes": 4_600_000_000})  # another machine's: no rate
    free = lambda path: shutil._ntuple_diskusage(100e9, 95e9, 5e9)  # noqa: E731
    monkeypatch.setattr(shutil, "disk_usage", free)
    lines: list = []
    plan = dry_run(both, measure=False, say=lines.append)
    assert (plan["done"], plan["pending"]) == (3, 2)
    assert plan["seconds"] == pytest.approx(2 * (2 * 78 / 26) + 78 / 2)
    assert "  sst2   pred+augment2" in lines[4] and lines[4].endswith("seeds 0")
    assert lines[-4:] == [
        f"  sst2: 1.0 s/epoch of 26 rows (median of 3 finished runs on {CPU} in results.csv)",
        "  sst2: 1 build(s) of 78 rows, 0 fine-tune epoch(s) at 2.0 teacher rows/s "
        f"(1 earlier build(s) on {CPU} in builds.csv)",
        f"disk: about 6.6 GB of caches to write, 5.0 GB free at {grid.work}",
        "  warning: the caches will not fit; free space there, or run fewer arms "
        "(--configs, --extra-rows) and remove a finished study's work/caches",
    ]
    # one build of the selection: its bytes per row (an upper bound); none: said, not guessed
    (tmp_path / "study" / "builds.csv").unlink()
    builds.append(row | {"rows": 26, "seconds": 13.0, "device": CPU, "bytes": 2_600_000_000})
    lines.clear()
    dry_run(both, measure=False, say=lines.append)
    assert lines[-2] == f"disk: about 7.8 GB of caches to write, 5.0 GB free at {grid.work}"
    # a larger build that took fewer bytes draws no line: the larger one's bytes per row
    builds.append(row | {"rows": 52, "bytes": 2_080_000_000})
    lines.clear()
    dry_run(both, measure=False, say=lines.append)
    assert lines[-1] == f"disk: about 3.1 GB of caches to write, 5.0 GB free at {grid.work}"
    (tmp_path / "study" / "builds.csv").unlink()
    builds.append(row | {"cache": "other", "rows": 26, "seconds": 13.0, "device": "cpu"})
    lines.clear()
    dry_run(both, measure=False, say=lines.append)
    assert lines[-2:] == [
        f"disk: about 0.0 GB of caches to write, 5.0 GB free at {grid.work}",
        "  1 cache(s) not estimated: no cache of their selection built yet",
    ]

    calls.clear()
    run_sweep(both, fake_runner(calls), show_progress=False, say=lambda _: None)
    assert calls == ["pred+augment2", f"{PLAIN}+augment2"]
    again = run_sweep(both, fake_runner(calls), show_progress=False, say=lambda _: None)
    assert again.pending == [] and len(results_table(grid.study).rows()) == 5

    md = (write_report(grid.study)).read_text()
    assert "## sst2, teacher" in md and md.count("extra rows augment2\n") == 1
    assert md.count(", no extra rows\n") == 1
    plain, extra = md.split(", extra rows augment2\n")
    assert "| `ce` |" in plain and "| `ce` |" in extra  # CE-only beside both variants
    assert "`pred+augment2`" in extra and "`pred+augment2`" not in plain
