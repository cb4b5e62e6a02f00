"""`hsktrain sweep` and `hsktrain report`: grid expansion, resume, the report, one real sweep."""

from __future__ import annotations

import csv
import hashlib
import json
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from conftest import SENTENCES, make_bert, write_sst2
from hskcache.devices import device_name
from hskcache.errors import ConfigError, HskError, TeacherError
from hskcache.reader import open_cache
from hsktrain.config import FitConfig
from hsktrain.study.anchors import read_anchors
from hsktrain.study.arms import ArmResults, group_arms
from hsktrain.study.claims import why_missed
from hsktrain.study.compare import compare
from hsktrain.study.estimate import _teacher_rate, dry_run
from hsktrain.study.figures import panels
from hsktrain.study.grid import Grid, load_grid, parse_flags
from hsktrain.study.report import write_report
from hsktrain.study.runlog import log_summary
from hsktrain.study.runs import (
    TaskRef,
    checkpoint_sha,
    expand_grid,
    recipe,
    resolve_tasks,
    task_limit,
)
from hsktrain.study.sweep import plan_sweep, run_sweep
from hsktrain.study.tables import builds_table, logs_table, results_table
from hsktrain.study.teachers import finetuned_dir, finetuning_study, teacher_depth
from hsktrain.train import train_step

SST2 = TaskRef("sst2", "SST-2", 64)


def test_expand_grid_lists_every_run_once_seed_major():
    grid = Grid(
        study="s",
        tasks=["SST-2"],
        seeds=[0, 1],
        configs=["full", "1l_10t_0.1h"],
        depth_layers=[1, 5],
        depth_l_top=[4, 6],
        length_tokens=[10, "all"],
        length_strategies=["left", "attention"],
        width_fractions=[0.1, 1.0],
        width_strategies=["uniform"],
    )
    runs = [(r.task.name, r.config, r.arm.axis, r.seed) for r in expand_grid(grid, [SST2], 6)]
    one_seed = [
        ("ce", "baseline"),
        ("pred", "baseline"),
        # depth 5 at the default l_top 4, K = all and p = 1 are all the full HSK: one arm
        ("full/-/-/l_top4", "config+depth+length+width"),
        ("1l_10t_0.1h/attention-no-sep/magnitude/l_top4", "config"),
        ("1l_64t_1h/-/-/l_top4", "depth"),
        ("1l_64t_1h/-/-/l_top6", "depth"),
        ("full/-/-/l_top6", "depth"),
        ("5l_10t_1h/left/-/l_top4", "length"),
        ("5l_10t_1h/attention/-/l_top4", "length"),
        ("5l_64t_0.1h/-/uniform/l_top4", "width"),
    ]
    assert runs == [("sst2", c, a, s) for s in (0, 1) for c, a in one_seed]


def test_per_batch_threshold_arms_train_online_beside_their_per_token_twins(tmp_path):
    teacher = make_bert(tmp_path / "teacher", layers=4)  # deep enough for every student state
    grid = fake_grid(
        tmp_path,
        teacher,
        baselines=[],
        configs=[],
        seeds=[0],
        chunk_rows=8,
        width_fractions=[0.5, 1.0],
        width_strategies=["magnitude", "threshold"],
        fit={"max_length": 16, "batch_size": 8, "buffer_chunks": 2},
    )
    runs = plan_sweep(grid, train=False).runs
    # p = 1 is the full HSK for both strategies: one arm, run from a cache
    assert [(r.config, r.arm.online) for r in runs] == [
        ("3l_16t_0.5h/-/magnitude/l_top3", False),
        ("full/-/-/l_top3", False),
        ("3l_16t_0.5h/-/threshold/l_top3", True),
    ]
    run_sweep(grid, show_progress=False, say=lambda _: None)
    rows = {r["width_strategy"]: r for r in results_table(grid.study).rows() if r["hsk"] != "full"}
    top_k, threshold = rows["magnitude"], rows["threshold"]
    assert threshold["cache_bytes"] == "" and int(top_k["cache_bytes"]) > 0  # no cache
    assert threshold["hsk_fraction"] == top_k["hsk_fraction"]  # the same share of values
    assert 0 <= float(threshold["dev_accuracy"]) <= 1
    run = next((grid.work / "runs").rglob("3l_16t_0.5h---threshold-l_top3/seed0/config.json"))
    cfg = json.loads(run.read_text())["config"]
    assert cfg["batch_threshold"] and cfg["online_teacher"] == str(teacher)
    assert cfg["cache"] is None and (cfg["hsk"], cfg["chunk_rows"]) == ("3l_16t_0.5h", 8)


def test_expansion_refuses_arms_a_cache_cannot_hold():
    grid = Grid(study="s", tasks=["SST-2"], configs=["6l_10t_0.1h"], depth_layers=[7])
    with pytest.raises(ConfigError) as e:
        expand_grid(grid, [SST2], 6)
    assert str(e.value) == (
        "depth.layers 7: a 4-layer student has 5 hidden states; '6l_10t_0.1h' keeps 6 layers; "
        "the student has 5 states"
    )
    # l_top 3 over 4 student layers: round(2 * 3 / 4) = round(3 * 3 / 4) = 2
    low = Grid(study="s", tasks=["SST-2"], configs=[], depth_layers=[1, 3], depth_l_top=[3])
    with pytest.raises(ConfigError) as e:
        expand_grid(low, [SST2], 6)
    assert str(e.value) == (
        "l_top 3 (3l_64t_1h): student states 2 and 3 both pair with teacher state 2; a cache "
        "stores each teacher state for one student state: raise l_top, keep fewer layers (the "
        "'l' in the HSK config) or use a shallower student"
    )


def test_grid_file_reports_every_problem_at_once(tmp_path):
    toml = tmp_path / "study.toml"
    toml.write_text(
        'study = "s"\ntasks = ["SST-2"]\nseeds = "0"\nbogus = 1\n'
        '[depth]\nlayers = [1]\nltop = [2]\n[fit]\nmode = "ce"\nlrr = 1\n'
    )
    with pytest.raises(ConfigError) as e:
        load_grid(str(toml), {})
    assert str(e.value) == (
        f"{toml}: unknown key 'bogus'; unknown key 'depth.ltop'; seeds = '0' is not list[int]"
    )
    toml.write_text(
        'study = "s"\ntasks = ["SST-2"]\nconfigs = ["1l"]\nbaselines = ["kd"]\n'
        '[width]\nfractions = [0.1, 2.0]\n[length]\ntokens = [0, "all"]\n'
        '[fit]\nmode = "ce"\nlrr = 1\nwarmup = 2.0\n'
    )
    with pytest.raises(ConfigError) as e:
        load_grid(str(toml), {"hsk_epochs": 0})
    assert str(e.value) == (
        f"{toml}: hsk_epochs must be >= 1; baseline 'kd' is not one of ('ce', 'pred'); "
        "bad HSK config '1l'; expected 'full' or '<layers>l_<tokens>t_<width>h' such as "
        "'1l_10t_0.1h'; length.tokens 0 must be a count >= 1 or 'all'; width.fractions 2.0 "
        "must be in (0, 1]; fit.mode is set by the sweep itself; unknown key 'fit.lrr'"
    )
    with pytest.raises(ConfigError, match=r"--seeds: 'x' is not an integer; --width-fractions: "):
        parse_flags({"seeds": "0,x", "width_fractions": "0.1,p"})
    with pytest.raises(ConfigError, match=r"^missing 'study' \(--study\)$"):
        load_grid(None, {"tasks": ["SST-2"]})


def test_configs_flag_runs_one_arm_of_a_study_whose_target_is_another(tmp_path):
    """[targets] are the whole study's: `--configs full` narrows what this sweep runs, and the
    target arm is still checked, against the file's configs."""
    toml = tmp_path / "study.toml"
    toml.write_text(
        'study = "s"\ntasks = ["SST-2"]\nconfigs = ["full", "1l_10t_0.1h"]\n'
        '[targets]\narm = "1l_10t_0.1h"\nover_ce = 0.03\n'
    )
    grid = load_grid(str(toml), parse_flags({"configs": "full", "baselines": ""}))
    assert (grid.configs, grid.baselines, grid.targets["arm"]) == (["full"], [], "1l_10t_0.1h")
    toml.write_text(
        'study = "s"\ntasks = ["SST-2"]\nconfigs = ["full"]\n'
        '[targets]\narm = "1l_10t_0.1h"\nover_ce = 0.03\n'
    )
    with pytest.raises(ConfigError) as e:
        load_grid(str(toml), parse_flags({"configs": "full,1l_10t_0.1h"}))
    assert str(e.value) == f"{toml}: targets.arm '1l_10t_0.1h' must be one of configs ['full']"


def test_tasks_resolve_under_glue_or_fail_naming_the_fix(tmp_path):
    write_sst2(tmp_path / "glue" / "SST-2")
    grid = Grid(study="s", tasks=["SST-2"], glue=str(tmp_path / "glue"))
    assert resolve_tasks(grid) == [TaskRef("sst2", str(tmp_path / "glue" / "SST-2"), 64)]
    missing = Grid(study="s", tasks=["MRPC", str(tmp_path)], glue=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError) as e:
        resolve_tasks(missing)
    assert str(e.value) == (
        f"task 'MRPC': GLUE folder {tmp_path / 'nowhere'} not found; pass --glue DIR or give "
        f"the task's folder path; task '{tmp_path}': {tmp_path} has no train.tsv (a GLUE task "
        "folder expected)"
    )


def test_bare_names_without_glue_are_found_as_the_demo_finds_its_data(tmp_path, monkeypatch):
    """No `glue`: $GLUE, then ../shared/data/glue, then the hub (offline in tests)."""
    write_sst2(tmp_path / "glue" / "SST-2")
    monkeypatch.setenv("GLUE", str(tmp_path / "glue"))
    grid = Grid(study="s", tasks=["SST-2"])
    assert resolve_tasks(grid) == [TaskRef("sst2", str(tmp_path / "glue" / "SST-2"), 64)]
    monkeypatch.chdir(tmp_path)  # no ../shared/data/glue from here
    with pytest.raises(
        ConfigError,
        match=r"^task 'MRPC': no mrpc data: no GLUE folder for it "
        r"under \$GLUE or .* pass --glue DIR or the task's folder or set GLUE=",
    ):
        resolve_tasks(Grid(study="s", tasks=["MRPC"]))


def test_limits_may_name_a_task_left_out_but_not_a_typo(tmp_path):
    """`--tasks MRPC` narrows a study file that also limits sst2: the limit just waits."""
    write_sst2(tmp_path / "glue" / "SST-2")
    glue = str(tmp_path / "glue")
    narrowed = Grid(study="s", tasks=["SST-2"], glue=glue, limits={"sst2": 8, "mrpc": 4})
    assert task_limit(narrowed, resolve_tasks(narrowed)[0]) == 8
    for key in ("SST-2", "sst"):  # the long name would never match a task: refused too
        with pytest.raises(ConfigError, match=rf"^limits\.{key}: not a task's short name "):
            resolve_tasks(Grid(study="s", tasks=["SST-2"], glue=glue, limits={key: 8}))


def fake_grid(tmp_path, teacher, **kw) -> Grid:
    data = write_sst2(tmp_path / "SST-2")
    values = dict(
        study=str(tmp_path / "study"),
        tasks=[str(data)],
        teacher=str(teacher),
        student="tiny",
        configs=["1l_2t_0.5h"],
        baselines=["ce"],
        seeds=[0, 1],
        hsk_epochs=1,
        pred_epochs=1,
    )
    return Grid(**{**values, **kw})


def test_rerun_skips_every_finished_run(tmp_path, tiny_bert, monkeypatch):
    grid = fake_grid(tmp_path, tiny_bert)
    calls = []

    def runner(run, ctx):
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed in the middle of the 4th run
        calls.append((run.config, run.seed))
        score = 0.5 + len(calls) / 10
        return {
            "metrics": {"accuracy": score},
            "best_stage": "pred",
            "best_epoch": 1,
            "train_seconds": 1.0,
            "hsk_fraction": 0.1,
            "cache_bytes": 100,
        }

    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, runner, show_progress=False, say=lambda _: None)
    table = results_table(grid.study)
    assert [(r["config"], r["seed"], r["dev_accuracy"]) for r in table.rows()] == [
        ("ce", "0", "0.6"),
        ("1l_2t_0.5h/attention-no-sep/magnitude/l_top1", "0", "0.7"),
        ("ce", "1", "0.8"),
    ]
    with table.path.open("a") as f:  # a kill in the middle of writing a row
        f.write("sst2,tiny_bert")
    calls.clear()
    sweep = run_sweep(grid, runner, show_progress=False, say=lambda _: None)
    assert calls == [("1l_2t_0.5h/attention-no-sep/magnitude/l_top1", 1)]
    assert len(sweep.done) == 3
    rows = table.rows()
    assert [(r["config"], r["seed"]) for r in rows][-1] == (calls[0][0], "1")
    assert len(rows) == 4 and rows[0]["teacher"].startswith("tiny_bert")
    assert "@" in rows[0]["teacher"]

    other = fake_grid(tmp_path, tiny_bert, pred_epochs=2)
    want = (
        r"^4 finished run\(s\) in results.csv used other settings, e.g. sst2 ce seed 0: "
        r"pred_epochs 2 \(this grid: 3\)"
    )
    with pytest.raises(ConfigError, match=want):
        run_sweep(other, runner, show_progress=False, say=lambda _: None)

    # the fit recipe is part of the budget: a changed [fit] option, ce_lr or default of `fit`
    # is named with only the options that differ
    assert rows[0]["recipe"].split()[:2] == ["hsk_lr=5e-05", "pred_lr=2e-05"]
    same = fake_grid(tmp_path, tiny_bert, fit={"temperature": 1, "max_grad_norm": None})
    assert len(run_sweep(same, runner, show_progress=False, say=lambda _: None).done) == 4
    hot = fake_grid(tmp_path, tiny_bert, fit={"temperature": 2.0})
    with pytest.raises(
        ConfigError,
        match=r"e\.g\. sst2 ce seed 0: recipe temperature=1\.0 "
        r"\(this grid: temperature=2\.0\)",
    ):
        run_sweep(hot, runner, show_progress=False, say=lambda _: None)
    with pytest.raises(ConfigError, match=r"recipe pred_lr=2e-05 \(this grid: pred_lr=0\.0001\)"):
        run_sweep(fake_grid(tmp_path, tiny_bert, ce_lr=1e-4), runner, False, lambda _: None)

    @dataclass
    class NewDefault(FitConfig):  # a later version of `fit` with another default
        warmup: float = 0.1

    monkeypatch.setattr("hsktrain.study.runs.FitConfig", NewDefault)
    with pytest.raises(ConfigError, match=r"recipe warmup=0\.0 \(this grid: warmup=0\.1\)"):
        run_sweep(grid, runner, show_progress=False, say=lambda _: None)


def fake_rows() -> list[dict]:
    """Two seeds per arm; scores chosen so means and stds are easy to check by hand."""
    arms = [
        # config, kind, axis, hsk, length, width, l_top, fraction, (seed 0, seed 1)
        ("ce", "ce", "baseline", "", "", "", "", 0.0, (0.80, 0.82)),
        ("pred", "pred", "baseline", "", "", "", "", 0.0, (0.81, 0.83)),
        (
            "full/-/-/l_top4",
            "hsk",
            "config+depth+length+width",
            "full",
            "-",
            "-",
            4,
            0.7,
            (0.84, 0.86),
        ),
        (
            "1l_10t_0.1h/a/m/l_top4",
            "hsk",
            "config",
            "1l_10t_0.1h",
            "attention-no-sep",
            "magnitude",
            4,
            0.002,
            (0.85, 0.87),
        ),
        ("5l_1t_1h/left/-/l_top4", "hsk", "length", "5l_1t_1h", "left", "-", 4, 0.02, (0.70, 0.72)),
        (
            "5l_1t_1h/attention/-/l_top4",
            "hsk",
            "length",
            "5l_1t_1h",
            "attention",
            "-",
            4,
            0.02,
            (0.75, 0.77),
        ),
        (
            "5l_1t_1h/ans/-/l_top4",
            "hsk",
            "length",
            "5l_1t_1h",
            "attention-no-sep",
            "-",
            4,
            0.02,
            (0.78, 0.80),
        ),
        (
            "5l_64t_0.1h/-/uniform/l_top4",
            "hsk",
            "width",
            "5l_64t_0.1h",
            "-",
            "uniform",
            4,
            0.07,
            (0.79, 0.81),
        ),
        (
            "5l_64t_0.1h/-/magnitude/l_top4",
            "hsk",
            "width",
            "5l_64t_0.1h",
            "-",
            "magnitude",
            4,
            0.07,
            (0.83, 0.84),
        ),
        (
            "5l_64t_0.1h/-/threshold/l_top4",
            "hsk",
            "width",
            "5l_64t_0.1h",
            "-",
            "threshold",
            4,
            0.07,
            (0.84, 0.84),
        ),
    ]
    rows = []
    for config, kind, axis, hsk, length, width, l_top, frac, scores in arms:
        for seed, score in enumerate(scores):
            rows.append(
                {
                    "task": "sst2",
                    "teacher": "t@abc",
                    "teacher_depth": 6,
                    "student": "tinybert4",
                    "config": config,
                    "kind": kind,
                    "axis": axis,
                    "hsk": hsk,
                    "length": length,
                    "width_strategy": width,
                    "l_top": l_top,
                    "hsk_fraction": frac,
                    "seed": seed,
                    "hsk_epochs": 3 if kind == "hsk" else 0,
                    "pred_epochs": 3 if kind == "hsk" else 6,
                    "recipe": "pred_lr=0.0001" if kind == "ce" else "pred_lr=2e-05",
                    "dev_accuracy": score,
                    "best_stage": "pred",
                    "best_epoch": 2,
                    "train_seconds": 100.0,
                    "device": "cpu",
                    "cache_bytes": 10,
                }
            )
    rows[1] |= {"train_seconds": 10.0, "device": "cuda (NVIDIA H200)"}  # ce seed 1 on a GPU
    return rows


def test_report_tables_claims_and_plots_from_a_fake_table(tmp_path):
    study = tmp_path / "study"
    table = results_table(study)
    for row in fake_rows():
        table.append(row)
    md = write_report(study).read_text()
    std = statistics.stdev([0.80, 0.82])  # 0.0141
    # seeds trained on two devices: their seconds apart, every cell naming its device
    cells = f"| `ce` | ce | baseline | - | 2 | 0.8100 +- {std:.4f} | pred 2, 2 |"
    assert f"{cells} 100 cpu, 10 cuda (NVIDIA H200) |" in md
    full = "| `full/-/-/l_top4` | hsk | config+depth+length+width | 70% | 2 | 0.8500 +- 0.0141 |"
    assert full in md
    # width: magnitude 0.835 +- 0.0071 (0.83, 0.84)
    assert "5l_64t_0.1h/-/magnitude/l_top4` | hsk | width | 7% | 2 | 0.8350 +- 0.0071 |" in md
    assert "- fit recipe of ce: `pred_lr=0.0001`\n- fit recipe of pred, hsk: `pred_lr=2e-05`" in md
    assert (
        "Wall-clock of the whole study, summed over its runs and builds (shards that ran at once "
        "overlapped, so less time passed): **0.53 h** on cpu (1900 s training 19 runs + 0 s "
        "fine-tuning, building and deriving 0 teachers and caches); **0.00 h** on cuda (NVIDIA "
        "H200) (10 s training 1 runs" in md
    )
    assert "| `pred` | pred | baseline | - | 2 | 0.8200 +- 0.0141 | pred 2, 2 | 100 cpu |" in md
    assert "- **distillation beats CE-only**: held (3 of 3 arms)" in md
    assert (
        "pred: 0.8200 +- 0.0141 (n=2) vs ce 0.8100 +- 0.0141 (n=2): > "
        "(difference inside the seeds' spread (0.0141))" in md
    )
    assert "- **HSK adds to prediction-only KD**: held (2 of 2 arms)" in md
    assert (
        "full/-/-/l_top4: 0.8500 +- 0.0141 (n=2) vs pred 0.8200 +- 0.0141 (n=2): > "
        "(difference outside" in md
    )
    assert "- **compressed HSK >= full HSK**: held (1 of 1 compressed arms)" in md
    assert (
        "1l_10t_0.1h/a/m/l_top4: 0.8600 +- 0.0141 (n=2) vs full 0.8500 +- 0.0141 (n=2): >= "
        "(difference inside the seeds' spread (0.0141))" in md
    )
    assert "- **attention-no-sep > attention > left (length)**: held" in md
    assert "attention-no-sep: mean over [1] = 0.7900" in md
    assert "- **magnitude > uniform / random (width)**: held (random missing)" in md
    assert "threshold (width)**: not held\n  - magnitude: mean over [0.1] = 0.8350" in md
    assert md.count("threshold (width)**: not held") == 1  # width arms: judged
    # the full arm is the depth axis's 100% point: judged, with too little data
    assert "- **an intermediate l_top beats the top layer (depth)**: not enough data" in md
    assert md.endswith(
        "- not judged, no arms on their axis in this study: joint compression beats single-axis "
        "at equal budget\n"
    )
    png = study / "sst2-t-abc.png"
    assert png.stat().st_size > 10_000 and "![marginal utility](sst2-t-abc.png)" in md


def test_a_real_tiny_sweep_writes_rows_and_skips_them_on_rerun(tmp_path, tiny_bert):
    grid = fake_grid(
        tmp_path,
        tiny_bert,
        baselines=["pred"],
        seeds=[0],
        chunk_rows=8,
        fit={"max_length": 16, "batch_size": 8, "buffer_chunks": 2},
    )
    run_sweep(grid, show_progress=False, say=lambda _: None)
    rows = results_table(grid.study).rows()
    assert [(r["kind"], r["hsk_epochs"], r["pred_epochs"]) for r in rows] == [
        ("pred", "0", "2"),
        ("hsk", "1", "1"),
    ]
    hsk = rows[1]
    assert 0 < float(hsk["hsk_fraction"]) < 1 and int(hsk["cache_bytes"]) > 0
    assert 0 <= float(hsk["dev_accuracy"]) <= 1 and hsk["best_stage"] == "pred"
    assert float(hsk["train_seconds"]) > 0 and hsk["code_version"]
    cpu = device_name("cpu")  # what the seconds were measured on: this CPU, by name
    assert [r["device"] for r in rows] == [cpu, cpu] and cpu.startswith("cpu (")
    with open(grid.work.parent / "builds.csv") as f:
        builds = list(csv.DictReader(f))
    # the dev rows' one-answer floor, then one cache for both runs
    assert [(b["how"], b["device"]) for b in builds] == [("floor", ""), ("build", cpu)]
    run_dirs = list((grid.work / "runs").rglob("metrics.jsonl"))
    assert len(run_dirs) == 2 and not any((p.parent / "best").exists() for p in run_dirs)
    # logs.csv: how each run learned, read back from its metrics.jsonl
    logs = logs_table(grid.study).rows()
    assert [(r["config"], r["seed"]) for r in logs] == [(r["config"], r["seed"]) for r in rows]
    pred, hsk_log = logs
    assert pred["hsk_start"] == pred["hsk_end"] == ""  # prediction-only: no HSK stage
    assert len(pred["dev_curve"].split()) == 2 and len(hsk_log["dev_curve"].split()) == 1
    assert float(hsk_log["dev_curve"]) == pytest.approx(float(hsk["dev_accuracy"]), abs=1e-4)
    assert float(hsk_log["hsk_end"]) > 0 and float(hsk_log["hsk_start"]) > 0
    again = run_sweep(grid, show_progress=False, say=lambda _: None)
    assert again.pending == [] and len(results_table(grid.study).rows()) == 2

    # a second seed: estimated from the table's own seconds per epoch, nothing timed
    lines = []
    plan = dry_run(replace(grid, seeds=[0, 1]), measure=False, say=lines.append)
    per_epoch = statistics.median(float(r["train_seconds"]) / 2 for r in rows)
    assert plan["pending"] == 2 and plan["seconds"] == pytest.approx(2 * 2 * per_epoch)
    assert lines[0] == "4 runs: 2 done, 2 to run"
    assert any(f"median of 2 finished runs on {cpu} in results.csv" in x for x in lines)
    assert "  sst2   pred" in lines[1] and lines[1].endswith("seeds 0* 1")


class Killed(BaseException):
    """A kill, as the sweep sees it: nothing catches it."""


class StepKiller:
    """`fit`'s train_step, counted (`calls`), killed at its `at`-th call (None: never)."""

    def __init__(self, monkeypatch):
        self.reset()
        monkeypatch.setattr("hsktrain.train.train_step", self)

    def reset(self, at: int | None = None) -> None:
        """Count from zero again, killing at the `at`-th call from now (None: never)."""
        self.calls, self.at = 0, at

    def __call__(self, *args, **kwargs):
        if self.calls == self.at:
            raise Killed
        self.calls += 1
        return train_step(*args, **kwargs)


def test_a_run_a_kill_cut_short_continues_from_its_last_epoch(tmp_path, tiny_bert, monkeypatch):
    kw = dict(
        baselines=[],
        seeds=[0],
        chunk_rows=8,
        hsk_epochs=2,
        fit={"max_length": 16, "batch_size": 8, "buffer_chunks": 2},
    )

    def step_records(grid) -> list[dict]:
        [log] = (grid.work / "runs").rglob("metrics.jsonl")
        return [r for r in map(json.loads, log.read_text().splitlines()) if "batch" in r]

    straight = fake_grid(tmp_path / "a", tiny_bert, **kw)
    run_sweep(straight, show_progress=False, say=lambda _: None)
    steps = step_records(straight)
    first_epoch = sum(r["stage"] == "hsk" and r["epoch"] == 0 for r in steps)
    assert 2 <= first_epoch < len(steps) - 2

    step = StepKiller(monkeypatch)

    def cut_short(grid):  # killed in the second HSK epoch, after the first one's checkpoint
        step.reset(at=first_epoch + 1)
        with pytest.raises(Killed):
            run_sweep(grid, show_progress=False, say=lambda _: None)
        assert results_table(grid.study).rows() == []
        step.reset()

    cut = fake_grid(tmp_path / "b", tiny_bert, **kw)
    cut_short(cut)
    lines = []
    dry_run(cut, measure=False, say=lines.append)  # the estimate leaves out the saved epoch
    assert (
        "  sst2: 1 run(s) a kill cut short continue from their last saved epoch (1 epoch(s) "
        "trained already, not counted)"
    ) in lines
    lines.clear()
    run_sweep(cut, show_progress=False, say=lines.append)
    assert any(x.startswith("  resuming ") for x in lines)
    assert step.calls == len(steps) - first_epoch  # from the second epoch's first batch
    assert [r["loss"] for r in step_records(cut)] == [r["loss"] for r in steps]
    [a], [b] = results_table(straight.study).rows(), results_table(cut.study).rows()
    assert b["dev_accuracy"] == a["dev_accuracy"] and float(b["train_seconds"]) > 0
    # fit's warning, said after the run's scores when they do not clear the one-answer floor
    share = sum(y for _, y in SENTENCES) / len(SENTENCES)
    warned = [x for x in lines if x.startswith("  warning: dev accuracy ")]
    assert len(warned) == (float(b["dev_accuracy"]) <= max(share, 1 - share) + 0.01)
    [log_a], [log_b] = logs_table(straight.study).rows(), logs_table(cut.study).rows()
    assert log_b == log_a

    # a cut run whose settings changed since starts over with the new ones
    changed = fake_grid(tmp_path / "c", tiny_bert, **kw)
    cut_short(changed)
    changed = replace(changed, fit=changed.fit | {"hsk_lr": 1e-4})
    lines.clear()
    run_sweep(changed, show_progress=False, say=lines.append)
    assert not any("resuming" in x for x in lines) and step.calls == len(steps)
    assert {r["lr"] for r in step_records(changed) if r["stage"] == "hsk"} == {1e-4}


def test_save_every_cuts_a_kill_to_its_steps_and_is_no_part_of_the_recipe(
    tmp_path, tiny_bert, monkeypatch
):
    """`[fit] save_every`: a run killed mid-epoch continues from its last save with the same
    losses and scores; the cadence is not in the recipe (its rows sit beside rows saved only at
    epoch ends) and may change between the kill and the rerun."""
    kw = dict(baselines=[], seeds=[0], chunk_rows=8, hsk_epochs=1)
    fit = {"max_length": 16, "batch_size": 8, "buffer_chunks": 2}

    def step_losses(grid) -> list[float]:
        [log] = (grid.work / "runs").rglob("metrics.jsonl")
        return [r["loss"] for r in map(json.loads, log.read_text().splitlines()) if "batch" in r]

    straight = fake_grid(tmp_path / "a", tiny_bert, **kw, fit=fit)
    run_sweep(straight, show_progress=False, say=lambda _: None)
    losses = step_losses(straight)
    assert len(losses) >= 6

    step = StepKiller(monkeypatch)
    step.reset(at=5)  # killed in step 6, after the save at step 4
    cut = fake_grid(tmp_path / "b", tiny_bert, **kw, fit=fit | {"save_every": 2})
    with pytest.raises(Killed):
        run_sweep(cut, show_progress=False, say=lambda _: None)
    step.reset()
    lines = []
    cut = replace(cut, fit=fit | {"save_every": 3})  # another cadence: the same run continues
    run_sweep(cut, show_progress=False, say=lines.append)
    assert any(x.startswith("  resuming ") for x in lines)
    assert step.calls == len(losses) - 4  # from step 5
    assert step_losses(cut) == losses
    [a], [b] = results_table(straight.study).rows(), results_table(cut.study).rows()
    assert (b["recipe"], b["dev_accuracy"]) == (a["recipe"], a["dev_accuracy"])


def test_a_build_a_kill_cut_short_is_recorded_as_resumed(tmp_path, tiny_bert, monkeypatch):
    """A resumed build's seconds are its last process's alone: builds.csv says `(resumed)`,
    the dry run's teacher rate leaves the row out and the report says its time is partial."""
    from hskcache import build

    grid = fake_grid(
        tmp_path,
        tiny_bert,
        baselines=[],
        seeds=[0],
        chunk_rows=8,
        fit={"max_length": 16, "batch_size": 8, "buffer_chunks": 2},
    )
    straight = build.compute_batch

    def killed(*args, **kwargs):  # after the cache's arrays are made, before a row is written
        raise Killed

    monkeypatch.setattr(build, "compute_batch", killed)
    with pytest.raises(Killed):
        run_sweep(grid, show_progress=False, say=lambda _: None)
    assert [r["how"] for r in builds_table(grid.study).rows()] == ["floor"]  # no build row
    monkeypatch.setattr(build, "compute_batch", straight)
    run_sweep(grid, show_progress=False, say=lambda _: None)
    [_, row] = builds_table(grid.study).rows()
    assert row["how"] == "build (resumed)" and float(row["seconds"]) > 0

    sweep = plan_sweep(grid, False, show_progress=False, say=lambda _: None)
    rate = _teacher_rate(sweep.ctx, sweep.tasks[0], measure=False)
    assert rate == (None, "no earlier build, and measuring was turned off")
    md = write_report(grid.study).read_text()
    assert "1 teachers and caches, 1 of them resumed after a kill: their earlier time" in md


def test_cli_refuses_a_bad_grid_and_an_empty_study_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from hsktrain.cli import app

    toml = tmp_path / "s.toml"
    toml.write_text('study = "s"\ntasks = ["SST-2"]\nseeds = [0]\n')
    r = CliRunner().invoke(app, ["sweep", "--config", str(toml), "--seeds", "0,x", "--dry-run"])
    assert r.exit_code == 1 and r.output.strip() == "error: --seeds: 'x' is not an integer"
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 1
    assert " ".join(r.output.split()) == (
        f"error: {tmp_path}: no results.csv rows; run `hsktrain sweep` with this study folder first"
    )
    r = CliRunner().invoke(app, ["compare", str(tmp_path), str(tmp_path / "other")])
    assert r.exit_code == 1
    assert " ".join(r.output.split()) == (
        "error: compare needs two or more study folders with results; no results.csv rows in "
        f"{tmp_path}, {tmp_path / 'other'}: run `hsktrain sweep` with each first"
    )


def test_finetuned_teacher_is_trained_once_and_reused(tmp_path, tiny_bert):
    grid = fake_grid(
        tmp_path, tiny_bert, finetune=True, finetune_epochs=1, seeds=[0], fit={"max_length": 16}
    )

    def runner(run, ctx):
        return {"metrics": {"accuracy": 0.5}, "train_seconds": 1.0}

    first = run_sweep(grid, runner, show_progress=False, say=lambda _: None)
    second = run_sweep(grid, runner, show_progress=False, say=lambda _: None)
    builds = list(csv.DictReader((tmp_path / "study" / "builds.csv").open()))
    assert [b["how"] for b in builds] == ["finetune", "floor"]  # the fake runner builds none
    key = first.ctx.teachers["sst2"].key
    assert key.startswith(f"{tiny_bert.name}+ft@") and builds[0]["teacher"] == key
    assert second.ctx.teachers["sst2"].key == key and second.pending == []
    assert (grid.work / "teachers" / f"sst2-{tiny_bert.name}" / "best" / "config.json").is_file()


def test_a_fine_tune_on_another_device_says_first_which_rows_it_may_not_continue(
    tmp_path, tiny_bert
):
    grid = fake_grid(
        tmp_path, tiny_bert, finetune=True, finetune_epochs=1, seeds=[0], fit={"max_length": 16}
    )

    def runner(run, ctx):
        return {"metrics": {"accuracy": 0.5}, "train_seconds": 1.0}

    lines = []
    key = run_sweep(grid, runner, show_progress=False, say=lines.append).ctx.teachers["sst2"].key
    assert not [line for line in lines if line.startswith("note:")]  # nothing made it before
    builds = tmp_path / "study" / "builds.csv"
    here = device_name("cpu")
    xeon = "cpu (Intel Xeon, family 6 model 207)"
    builds.write_text(builds.read_text().replace(here, xeon))  # as fine-tuned on that CPU
    folder = finetuned_dir(grid, resolve_tasks(grid)[0], str(tiny_bert))
    (folder / "teacher.json").unlink()  # this machine has no copy of it: fine-tuned again
    lines.clear()
    run_sweep(grid, runner, show_progress=False, say=lines.append)
    note = (
        f"note: sst2: 2 row(s) of results.csv were made with {key}, fine-tuned on {xeon}; this "
        f"fine-tune runs on {here}: unless the two compute alike (the same CPU model; pinned, "
        "Intel CPUs with AVX2), its weights differ and those rows start over"
    )
    assert lines[:2] == [note, f"fine-tune {tiny_bert.name} on sst2 -> {folder}"]
    (folder / "teacher.json").unlink()  # fine-tuned here now too: nothing to say
    lines.clear()
    run_sweep(grid, runner, show_progress=False, say=lines.append)
    assert lines[0] == f"fine-tune {tiny_bert.name} on sst2 -> {folder}"


def test_rows_of_the_same_teacher_with_other_weights_are_said_and_keyed_apart(tmp_path, tiny_bert):
    grid = fake_grid(tmp_path, tiny_bert, seeds=[0], fit={"max_length": 16})

    def runner(run, ctx):
        return {"metrics": {"accuracy": 0.5}, "train_seconds": 1.0}

    key = run_sweep(grid, runner, show_progress=False, say=lambda _: None).ctx.teachers["sst2"].key
    table = tmp_path / "study" / "results.csv"
    other = key.split("@")[0] + "@0123456789ab"  # as fine-tuned again on another CPU
    table.write_text(table.read_text().replace(key, other))
    lines = []
    again = run_sweep(grid, runner, show_progress=False, say=lines.append)
    assert lines[0] == (
        f"note: sst2: 2 row(s) of results.csv were made with {other}, this sweep's teacher is "
        f"{key} (other weights: fine-tuned again, here or on another CPU); they do not count as "
        "done, the new rows and the report keep the two teachers apart"
    )
    assert len(again.pending) == 2  # both arms again, under this teacher
    rows = list(csv.DictReader(table.open()))
    assert [r["teacher"] for r in rows] == [other, other, key, key]
    lines.clear()
    run_sweep(grid, runner, show_progress=False, say=lines.append)
    assert lines[0].startswith("note: sst2: 2 row(s)")  # the old rows stay, still said


def test_a_fine_tune_a_kill_cut_short_continues_to_the_same_teacher(
    tmp_path, tiny_bert, monkeypatch
):
    def runner(run, ctx):
        return {"metrics": {"accuracy": 0.5}, "train_seconds": 1.0}

    kw = dict(finetune=True, finetune_epochs=2, seeds=[0], fit={"max_length": 16})
    straight = fake_grid(tmp_path / "a", tiny_bert, **kw)
    key = run_sweep(straight, runner, show_progress=False, say=lambda _: None).ctx.teachers
    [log] = (straight.work / "teachers").rglob("metrics.jsonl")
    per_epoch = sum(r.get("epoch") == 0 and "batch" in r for r in map(json.loads, log.open()))
    step = StepKiller(monkeypatch)
    step.reset(at=per_epoch)  # killed in the second epoch, after the first one's save
    cut = fake_grid(tmp_path / "b", tiny_bert, **kw)
    with pytest.raises(Killed):
        run_sweep(cut, runner, show_progress=False, say=lambda _: None)
    step.reset()
    lines = []
    again = run_sweep(cut, runner, show_progress=False, say=lines.append)
    assert any(x.startswith("  resuming ") for x in lines) and step.calls == per_epoch
    assert again.ctx.teachers["sst2"].key == key["sst2"].key  # the same weights' sha256


def test_dry_run_times_a_few_steps_when_the_table_is_empty(tmp_path, tiny_bert, monkeypatch):
    grid = fake_grid(tmp_path, tiny_bert, seeds=[0], fit={"max_length": 16, "batch_size": 4})
    lines = []
    monkeypatch.setattr("os.getloadavg", lambda: (7.5, 7.0, 6.0))  # a busy machine
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    plan = dry_run(grid, measure=True, say=lines.append)
    assert plan["pending"] == 2 and plan["seconds"] > 0
    assert any("ms/step measured here, batch 4" in x for x in lines)
    assert any("1 build(s) of 26 rows, 0 fine-tune epoch(s) at" in x for x in lines)
    assert lines[-1] == (
        "  timed at load 7.5 on 2 cores: other work here (a study running?) inflates the estimate"
    )
    assert not (tmp_path / "study" / "results.csv").exists()


def test_smaller_caches_are_cut_out_of_each_familys_largest(tmp_path):
    # 4 teacher layers: l_top 3 pairs the tiny student's 3 states with 3 distinct teacher states
    teacher = make_bert(tmp_path / "teacher", layers=4)
    grid = fake_grid(
        tmp_path,
        teacher,
        seeds=[0],
        baselines=[],
        configs=["full", "1l_2t_0.5h", "2l_4t_0.5h"],
        width_fractions=[0.5],
        width_strategies=["uniform"],
        chunk_rows=8,
        fit={"max_length": 16},
    )
    sweep = plan_sweep(grid, train=True, show_progress=False, say=lambda _: None)
    caches = {r.config: sweep.ctx.cache_for(r) for r in sweep.runs}
    builds = list(csv.DictReader((tmp_path / "study" / "builds.csv").open()))
    assert [(b["how"], b["cache"]) for b in builds] == [
        ("floor", "one-answer"),
        ("build", "full-left-magnitude-l_top3"),
        ("build", "2l_4t_0.5h-attention-no-sep-magnitude-l_top3"),
        ("derive", "1l_2t_0.5h-attention-no-sep-magnitude-l_top3"),
        ("derive", "3l_16t_0.5h-left-uniform-l_top3"),
    ]
    small = open_cache(str(caches["1l_2t_0.5h/attention-no-sep/magnitude/l_top3"])).manifest
    assert small["derived_from"]["selection"] == "2l_4t_0.5h"
    uniform = open_cache(str(caches["3l_16t_0.5h/-/uniform/l_top3"])).manifest
    assert uniform["selection"]["width_strategy"] == "uniform"
    assert uniform["derived_from"]["selection"] == "full"


def test_a_table_of_another_version_is_refused_naming_its_columns(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    old = [c for c in results_table(study).columns if c != "recipe"] + ["notes"]
    (study / "results.csv").write_text(",".join(old) + "\n")
    want = (
        r"results\.csv: lacks recipe; has unknown notes \(written by another version of hsktrain\)"
    )
    with pytest.raises(HskError, match=want):
        results_table(study).rows()


def test_a_pretrained_init_is_recorded_by_its_weights(tmp_path, tiny_bert):
    """`[fit] init_from`: refused by name before any work where no checkpoint lies, else in
    each row's recipe as PATH@sha12, so a student distilled again (other weights) at the same
    path is another recipe, not more seeds of the old one."""
    student = tmp_path / "general" / "best"

    def runner(run, ctx):
        return {"metrics": {"accuracy": 0.5}, "train_seconds": 1.0}

    grid = fake_grid(
        tmp_path, tiny_bert, seeds=[0], fit={"init": "pretrained", "init_from": str(student)}
    )
    with pytest.raises(ConfigError, match=r"^\[fit\] init_from .*/general/best: no checkpoint"):
        run_sweep(grid, runner, show_progress=False, say=lambda _: None)
    assert not (grid.work / "caches").exists()
    student.mkdir(parents=True)
    (student / "model.safetensors").write_bytes(b"weights")
    run_sweep(grid, runner, show_progress=False, say=lambda _: None)
    recipes = {r["recipe"].split()[-1] for r in results_table(grid.study).rows()}
    sha = hashlib.sha256(b"model.safetensors\0weights").hexdigest()[:12]
    assert recipes == {f"init_from={student}@{sha}"}
    md = write_report(grid.study).read_text()  # its cost lies outside this study's tables
    assert f"Not counted: making the pretrained init the runs start from, `{student}@{sha}`." in md

    again = tmp_path / "again" / "best"  # the same student, distilled again elsewhere
    again.mkdir(parents=True)
    (again / "model.safetensors").write_bytes(b"other weights")
    student.rename(tmp_path / "old")
    again.rename(student)
    checkpoint_sha.cache_clear()  # a new process: the sweep reads the folder once
    with pytest.raises(ConfigError, match=r"used other settings, .*recipe init_from="):
        run_sweep(grid, runner, show_progress=False, say=lambda _: None)


def test_compare_lines_up_studies_by_arm_and_labels_their_recipe_differences(tmp_path):
    first, second = tmp_path / "paper", tmp_path / "lr"
    for row in fake_rows():
        results_table(first).append(row)
    for row in fake_rows()[:4]:  # ce and pred, the prediction lr raised; another teacher name
        lr = "pred_lr=0.0001" if row["kind"] == "ce" else "pred_lr=5e-05"
        results_table(second).append(
            row
            | {"teacher": "renamed@abc", "recipe": lr, "dev_accuracy": row["dev_accuracy"] + 0.01}
        )
    split = tmp_path / "split"  # the HSK arms' stages split 1 + 5: a budget, named as one
    for row in fake_rows()[4:6]:
        results_table(split).append(row | {"hsk_epochs": 1, "pred_epochs": 5})
    init = tmp_path / "init"  # another student shape, an option the first did not set
    for row in fake_rows()[:2]:
        results_table(init).append(row | {"student": "full4", "recipe": "layer_choice=bottom"})
    md = compare([first, second, split, init])
    assert md.count("## sst2, teacher `t@abc`: dev accuracy") == 1  # the same weights
    assert "| study | recipe vs the first | `ce` | `pred` | `full/-/-/l_top4` | `5l_64t" in md
    assert "| `paper` | - | 0.8100 +- 0.0141 (n=2) | 0.8200 +- 0.0141 (n=2) | 0.8500" in md
    assert (
        "| `lr` | pred: pred_lr=5e-05 | 0.8200 +- 0.0141 (n=2) | 0.8300 +- 0.0141 (n=2) | - |" in md
    )
    assert "| `split` | epochs=1+5 | - | - | 0.8500 +- 0.0141 (n=2) |" in md
    assert "| `init` | student=full4 layer_choice=bottom pred_lr=None | 0.8100" in md
    # an arm with extra rows (their limit counts them) is set against the same arm, not its twin
    both, extra = tmp_path / "both", tmp_path / "extra"
    for row in fake_rows()[4:6]:
        extended = row | {"config": row["config"] + "+augment4", "limit": 20}
        results_table(both).append(row)
        results_table(both).append(extended)
        results_table(extra).append(extended | {"hsk_epochs": 10})
    md = compare([both, extra])
    assert "| `both` | - | 0.8500 +- 0.0141 (n=2) | 0.8500 +- 0.0141 (n=2) |" in md
    assert "| `extra` | epochs=10+3 | - | 0.8500 +- 0.0141 (n=2) |" in md  # the +augment4 column
    # each task's recipe against the first study's on that task: MRPC's whole rows are no
    # difference from SST-2's limit, and the first study that has MRPC heads its section
    tasks, sst2 = tmp_path / "tasks", tmp_path / "sst2"
    for row in fake_rows()[:2]:
        results_table(tasks).append(row | {"task": "mrpc"})
        results_table(tasks).append(row | {"limit": 8000})
        results_table(sst2).append(row | {"limit": 8000, "recipe": "pred_lr=0.0002"})
    md = compare([sst2, tasks])
    assert "| `sst2` | - | 0.8100 +- 0.0141 (n=2) |" in md
    assert "| `tasks` | pred_lr=0.0001 | 0.8100 +- 0.0141 (n=2) |" in md
    assert "| `tasks` | - | 0.8100" in md.split("## mrpc")[1]
    with pytest.raises(HskError, match="compare needs two or more study folders"):
        compare([first])
    # a study still to run is named and left out; with one study left, nothing to compare
    waiting = tmp_path / "waiting"
    md = compare([first, second, waiting])
    assert md.startswith("# 2 studies compared") and f"left out: `{waiting}`." in md
    with pytest.raises(HskError, match=f"with results; no results.csv rows in {waiting}: run"):
        compare([first, waiting])


def test_shards_split_the_runs_and_make_each_teacher_and_cache_once(tmp_path, tiny_bert):
    """Two shards of one study at once (threads: flock holds between open files of one process
    as between processes): every run once, the teacher fine-tuned once, each cache built once."""
    import threading

    grid = fake_grid(
        tmp_path,
        tiny_bert,
        finetune=True,
        finetune_epochs=1,
        chunk_rows=8,
        configs=["1l_2t_0.5h", "1l_1t_0.5h"],
        fit={"max_length": 16},
    )
    ran: dict[int, list] = {0: [], 1: []}

    def runner_of(shard):
        def runner(run, ctx):
            ctx.cache_for(run)  # the shared cache, made under the lock
            ran[shard].append((run.config, run.seed))
            return {"metrics": {"accuracy": 0.5}, "train_seconds": 1.0}

        return runner

    errors = []

    def go(shard):
        try:
            run_sweep(grid, runner_of(shard), False, lambda _: None, shard=(shard, 2))
        except Exception as e:  # collected: asserted empty below
            errors.append(e)

    threads = [threading.Thread(target=go, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    runs = expand_grid(grid, resolve_tasks(grid), 2)
    keys = [(r.config, r.seed) for r in runs]
    assert ran == {0: keys[0::2], 1: keys[1::2]}  # 6 runs: ce, two configs, seeds 0 and 1
    rows = results_table(grid.study).rows()
    assert sorted((r["config"], int(r["seed"])) for r in rows) == sorted(keys)
    builds = list(csv.DictReader((tmp_path / "study" / "builds.csv").open()))
    hows = [b["how"] for b in builds]
    assert hows.count("finetune") == 1 and hows.count("build") == 1  # 1l_1t cut out of 1l_2t
    assert len({b["cache"] for b in builds}) == len(builds)
    assert run_sweep(grid, runner_of(0), False, lambda _: None).pending == []


def test_shard_and_device_flags_are_checked_before_any_work(tmp_path):
    import torch
    from typer.testing import CliRunner

    from hsktrain.cli import app
    from hsktrain.study.grid import parse_shard

    assert parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "a/2", "-1/2"):
        with pytest.raises(ConfigError, match=rf"--shard '{bad}': give I/N with 0 <= I < N"):
            parse_shard(bad)
    toml = tmp_path / "s.toml"
    toml.write_text('study = "s"\ntasks = ["SST-2"]\n[fit]\ndevice = "cuda:x"\ntemperature = 2.0\n')
    r = CliRunner().invoke(app, ["sweep", "--config", str(toml), "--shard", "2/2"])
    assert r.exit_code == 1 and r.output.strip().startswith("error: --shard '2/2'")
    with pytest.raises(ConfigError, match=r"s.toml: fit: unknown device 'cuda:x'; use cpu"):
        load_grid(str(toml), {})  # checked as `fit` checks it
    if not torch.cuda.is_available():
        with pytest.raises(
            ConfigError,
            match=r"fit: device 'cuda' asked for, but torch .* sees "
            "no CUDA GPU here; use --device cpu",
        ):
            load_grid(str(toml), {}, {"device": "cuda"})
    # --device overrides [fit]'s device and keeps its other options
    assert load_grid(str(toml), {}, {"device": "cpu"}).fit == {"device": "cpu", "temperature": 2.0}


def test_prepare_makes_the_teachers_and_caches_and_trains_nothing(tmp_path, tiny_bert):
    from typer.testing import CliRunner

    from hsktrain.cli import app

    grid = fake_grid(
        tmp_path,
        tiny_bert,
        finetune=True,
        finetune_epochs=1,
        configs=["1l_2t_0.5h", "1l_1t_0.25h"],
        seeds=[0],
        chunk_rows=8,
        fit={"max_length": 16},
    )
    lines = []
    ready = run_sweep(grid, show_progress=False, say=lines.append, prepare=True)
    builds = builds_table(grid.study).rows()
    # one cut of the other
    assert [b["how"] for b in builds] == ["finetune", "floor", "build", "derive"]
    assert lines[-1] == "teachers and 2 cache(s) of 3 pending runs ready"
    assert results_table(grid.study).rows() == [] and not (grid.work / "runs").exists()

    def runner(run, ctx):
        ctx.cache_for(run)  # complete already: nothing more is built
        return {"metrics": {"accuracy": 0.5}, "train_seconds": 1.0}

    done = run_sweep(grid, runner, show_progress=False, say=lambda _: None)
    assert len(done.pending) == 3 and builds_table(grid.study).rows() == builds  # made once
    assert done.ctx.teachers["sst2"].key == ready.ctx.teachers["sst2"].key
    r = CliRunner().invoke(app, ["sweep", "--study", "s", "--dry-run", "--prepare"])
    assert r.exit_code == 1 and r.output.strip() == (
        "error: --dry-run and --prepare: give one (--dry-run does no work)"
    )


def test_a_teacher_another_study_fine_tunes_names_that_study_while_missing(tmp_path):
    """A study reusing another's fine-tuned teacher, run first, is told which sweep makes it
    (not the hub's complaint about a repo id)."""
    other = tmp_path / "reports" / "other"
    other.mkdir(parents=True)
    (other / "study.toml").write_text('study = "reports/other"\n')
    folder = finetuned_dir(Grid(study=str(other), tasks=["sst2"]), SST2, "models/base")
    assert finetuning_study(str(folder)) == other
    path = str(folder / "best")
    with pytest.raises(TeacherError) as e:
        teacher_depth(path)
    assert str(e.value) == (
        f"teacher {path}: no such folder; the study {other} fine-tunes it: "
        f"hsktrain sweep --config {other / 'study.toml'} --prepare"
    )
    (other / "study.toml").unlink()  # a study run from flags: its folder, the rest elided
    with pytest.raises(TeacherError, match=rf"hsktrain sweep --study {other} \.\.\. --prepare$"):
        teacher_depth(path)
    moved = finetuned_dir(Grid(str(other), ["sst2"], workdir=str(tmp_path / "w")), SST2, "b")
    assert finetuning_study(str(moved)) is None  # a `workdir` names no study


def test_a_studys_init_choices_reach_its_caches_and_its_table(tmp_path):
    """`[fit] select` / `layer_choice` shape the init each cache stores (else fit would refuse
    it) and are recorded in the recipe only when set (older rows stay comparable)."""
    teacher = make_bert(tmp_path / "teacher", layers=4)
    fit = {"max_length": 16, "select": "importance", "layer_choice": "bottom"}
    grid = fake_grid(tmp_path, teacher, seeds=[0], baselines=[], chunk_rows=8, fit=fit)
    sweep = plan_sweep(grid, train=True, show_progress=False, say=lambda _: None)
    cache = open_cache(str(sweep.ctx.cache_for(sweep.runs[0])))
    init = cache.info.assets.students["tiny"]
    assert init.teacher_layers == (0, 1) and dict(init.select)["by"] == "importance"
    assert recipe(grid, sweep.runs[0].arm).endswith("select=importance layer_choice=bottom")
    plain = recipe(fake_grid(tmp_path, teacher), sweep.runs[0].arm).split()
    assert not any(kv.startswith(("select=", "layer_choice=")) for kv in plain)


def test_a_teacher_another_study_fine_tuned_brings_its_scores_to_the_report(tmp_path, tiny_bert):
    """A study reusing another's fine-tuned teacher records it once (how `reuse`, with the dev
    scores that sweep chose it by), so its report sets the students against the teacher."""
    first = fake_grid(tmp_path, tiny_bert, finetune=True, finetune_epochs=1, seeds=[0])
    first = replace(first, study=str(tmp_path / "first"), fit={"max_length": 16})
    tuned = run_sweep(first, show_progress=False, say=lambda _: None, prepare=True)
    best = tuned.ctx.teachers["sst2"].path
    dev = json.loads((Path(best).parent / "teacher.json").read_text())["dev"]
    grid = fake_grid(tmp_path, best, seeds=[0], fit={"max_length": 16})

    def runner(run, ctx):
        return {"metrics": {"accuracy": 0.5}, "train_seconds": 1.0}

    for _ in range(2):  # a rerun records nothing again
        done = run_sweep(grid, runner, show_progress=False, say=lambda _: None)
    key = done.ctx.teachers["sst2"].key
    reuse = [r for r in builds_table(grid.study).rows() if r["how"] == "reuse"]
    assert [(r["task"], r["teacher"], r["source"]) for r in reuse] == [("sst2", key, best)]
    assert json.loads(reuse[0]["dev"]) == dev and float(reuse[0]["seconds"]) == 0.0
    md = write_report(grid.study).read_text()
    scores = ", ".join(f"{k} {v:.4f}" for k, v in dev.items())
    assert f"- teacher `{key}` fine-tuned on sst2 by another study (`{best}`): dev {scores}" in md
    assert f"| {0.5 / dev['accuracy']:.1%} (" in md  # each arm as a share of the teacher
    assert "0 s fine-tuning, building and deriving" in md  # nothing made here, nothing counted


def test_a_sweep_records_the_dev_rows_one_answer_floor_once(tmp_path, tiny_bert):
    """Answering one class for every dev row is read off the dev labels (the first 5 of the
    fixture: 1 0 1 0 0, so always 0 scores 3 of 5), once per task, even by a sweep that has
    nothing left to train; the report sets every arm against it and says which cleared it."""
    grid = fake_grid(tmp_path, tiny_bert, seeds=[0], dev_limit=5)
    scores = iter([0.6, 0.8])  # ce at the floor, the HSK arm above it

    def runner(run, ctx):
        return {"metrics": {"accuracy": next(scores)}, "train_seconds": 1.0}

    for _ in range(2):  # the rerun trains nothing and records nothing again
        run_sweep(grid, runner, show_progress=False, say=lambda _: None)
    [floor] = builds_table(grid.study).rows()
    assert (floor["task"], floor["how"], floor["cache"], floor["rows"]) == (
        "sst2",
        "floor",
        "one-answer",
        "5",
    )
    assert json.loads(floor["dev"]) == {"accuracy": 0.6}
    fewer = replace(grid, dev_limit=4, seeds=[1])  # new seeds scored on other dev rows: refused
    want = r"builds\.csv: this study scores sst2 on 5 dev rows, this grid's dev_limit "
    with pytest.raises(ConfigError, match=want):
        run_sweep(fewer, runner, show_progress=False, say=lambda _: None)
    assert len(builds_table(grid.study).rows()) == 1 and len(results_table(grid.study).rows()) == 2
    md = write_report(grid.study).read_text()
    assert "| *one answer for every row* | floor | - | - | - | 0.6000 | - | - |" in md
    claim = "- **the students learned the task (a metric > 1 point above answering one class "
    assert f"{claim}for every row: accuracy 0.6000)**: partly held (1 of 2 arms)" in md
    assert "  - ce: 0.6000 (n=1); points above it: accuracy +0.00 (not cleared)" in md
    assert (
        "  - 1l_2t_0.5h/attention-no-sep/magnitude/l_top1: 0.8000 (n=1); points above it: "
        "accuracy +20.00 (cleared)" in md
    )
    assert "0 s fine-tuning, building and deriving 0 teachers and caches" in md  # a read, no cost
    other = tmp_path / "other"  # compare: the floor under every table of the task
    row = results_table(grid.study).rows()[0]
    results_table(other).append(row)
    tune = {"task": "sst2", "teacher": row["teacher"], "cache": "teacher", "how": "finetune"}
    tune |= {"source": "t", "seconds": 60.0, "device": "cpu", "bytes": 1, "rows": None}
    tune |= {"dev": json.dumps({"accuracy": 0.9}), "code_version": "x", "timestamp": "t"}
    builds_table(other).append(tune)
    md = compare([grid.study, other])
    assert "Against: the teacher 0.9000; answering one class for every row 0.6000." in md


def test_an_arm_clears_the_floor_in_any_metric_it_scores(tmp_path):
    """MRPC: an arm whose F1 falls under always answering "equivalent" while its accuracy is
    3 points over the majority class learned something; one at both floors did not."""
    study = tmp_path / "study"
    base = fake_rows()[0] | {"task": "mrpc", "seed": 0}
    results_table(study).append(base | {"config": "ce", "dev_accuracy": 0.71, "dev_f1": 0.80})
    pred = {"config": "pred", "kind": "pred", "dev_accuracy": 0.688, "dev_f1": 0.815}
    results_table(study).append(base | pred)
    floor = {"task": "mrpc", "teacher": None, "cache": "one-answer", "how": "floor"}
    floor |= {"source": "d", "seconds": 0.0, "device": "cpu", "bytes": None, "rows": 408}
    floor |= {"dev": json.dumps({"accuracy": 0.68, "f1": 0.81}), "code_version": "x"}
    builds_table(study).append(floor | {"timestamp": "t"})
    md = write_report(study).read_text()
    assert "| *one answer for every row* | floor | - | - | - | 0.8100 | 0.6800 | - | - |" in md
    assert (
        "- **the students learned the task (a metric > 1 point above answering one class for "
        "every row: f1 0.8100, accuracy 0.6800)**: partly held (1 of 2 arms)\n"
        "  - ce: 0.8000 (n=1); points above it: f1 -1.00, accuracy +3.00 (cleared)\n"
        "  - pred: 0.8150 (n=1); points above it: f1 +0.50, accuracy +0.80 (not cleared)" in md
    )


def test_why_a_target_was_missed_is_read_off_the_arms_logs():
    """Each seed's dev curve: best at its first epoch, its last, or between; a one-epoch curve
    says neither; no logs, nothing said."""
    arm = ArmResults("a", "hsk", ["config"], "1l_10t_0.1h", "-", "-", "4", 2, 0.01)
    logs = [
        {"config": "a", "dev_curve": c, "hsk_start": "", "hsk_end": e}
        for c, e in [("0.9 0.8 0.7", "0.6"), ("0.7 0.9 0.8", "0.7"), ("0.8", ""), ("", "")]
    ]
    assert why_missed(arm, logs) == (
        "best at its first epoch in 1 of 2 seeds, falling after (more epochs alone would not "
        "help); best between its first and last epochs in 1 of 2 seeds; its HSK loss ends its "
        "stage at 65% of an all-zero prediction's"
    )
    assert why_missed(arm, [{**r, "config": "b"} for r in logs]) is None


def test_report_names_a_teacher_fine_tuned_twice_once(tmp_path):
    """A teacher whose folder did not survive is fine-tuned again: the same key and scores, so
    the report lists it once and says how many times."""
    study = tmp_path / "study"
    table = results_table(study)
    for row in fake_rows():
        table.append(row)
    tune = {"task": "mrpc", "teacher": "t+ft@abc", "cache": "teacher", "how": "finetune"}
    tune |= {"source": "t", "seconds": 60.0, "device": "cpu", "bytes": 1, "rows": None}
    tune |= {"dev": json.dumps({"accuracy": 0.8, "f1": 0.86}), "code_version": "x"}
    for stamp in ("2026-12-02T10:00:00", "2026-12-02T14:00:00"):
        builds_table(study).append(tune | {"timestamp": stamp})
    md = write_report(study).read_text()
    line = "- teacher `t+ft@abc` fine-tuned on mrpc: dev accuracy 0.8000, f1 0.8600"
    assert md.count(line) == 1
    assert f"{line} (fine-tuned 2 times here, the same weights each time)" in md


def test_report_sets_students_against_their_teacher_and_their_extra_rows(tmp_path):
    """A study that fine-tuned its teacher shows each arm as a share of the teacher's score; a
    KD arm run with and without the teacher-labelled extra rows is judged pair by pair."""
    study = tmp_path / "study"
    table = results_table(study)
    by_config = {
        "ce": ("ce", (0.70, 0.72)),
        "pred": ("pred", (0.80, 0.80)),
        "pred+labelled8": ("pred", (0.84, 0.86)),
        "full/-/-/l_top4": ("hsk", (0.81, 0.83)),
        "full/-/-/l_top4+labelled8": ("hsk", (0.80, 0.80)),
    }
    base = fake_rows()[0] | {"teacher": "t+ft@abc", "axis": "baseline", "hsk": ""}
    for config, (kind, scores) in by_config.items():
        hsk = {"axis": "config", "hsk": "full", "hsk_fraction": 1.0} if kind == "hsk" else {}
        for seed, score in enumerate(scores):
            row = {"config": config, "kind": kind, "seed": seed, "dev_accuracy": score}
            table.append(base | row | hsk)
    tune = {"task": "sst2", "teacher": "t+ft@abc", "cache": "teacher", "how": "finetune"}
    tune |= {"source": "t", "seconds": 60.0, "device": "cpu", "bytes": 1, "rows": None}
    tune |= {"dev": json.dumps({"accuracy": 0.9}), "code_version": "x", "timestamp": "t"}
    builds_table(study).append(tune)
    md = write_report(study).read_text()
    # 0.85 / 0.9 = 94.4%, 5 points under
    assert "| `pred+labelled8` | pred | baseline | - | 2 | 0.8500 +- 0.0141 | 94.4% (-5.0) |" in md
    assert "| `ce` | ce | baseline | - | 2 | 0.7100 +- 0.0141 | 78.9% (-19.0) |" in md
    claim = "- **teacher-labelled extra rows help KD (the same arm without them)**: "
    assert md.count(claim) == 1  # in the extra rows' section only
    assert f"{claim}partly held (1 of 2 arms)" in md
    assert (
        "  - pred+labelled8: 0.8500 +- 0.0141 (n=2) vs pred 0.8000 +- 0.0000 (n=2): > "
        "(difference outside the seeds' spread (0.0141))" in md
    )
    assert "  - full/-/-/l_top4+labelled8: 0.8000 +- 0.0000 (n=2) vs full/-/-/l_top4 " in md


def test_reports_order_extra_rows_after_the_plain_arms_whatever_landed_first(tmp_path):
    """A study that ran its extra-rows arms first still reports (and compares) the plain rows'
    section first and each plain arm before its twin, so a table keeps its layout as runs land."""
    studies = [tmp_path / "one", tmp_path / "two"]
    base = fake_rows()[0] | {"teacher": "t@abc", "axis": "baseline", "hsk": ""}
    for study in studies:
        for config in ("pred+labelled8", "ce", "pred"):
            kind = config.split("+")[0]
            for seed in (0, 1):
                row = {"config": config, "kind": kind, "seed": seed, "dev_accuracy": 0.8}
                results_table(study).append(base | row)
    md = write_report(studies[0]).read_text()
    assert md.index(", no extra rows\n") < md.index(", extra rows labelled8\n")
    assert "| study | recipe vs the first | `ce` | `pred` | `pred+labelled8` |" in compare(studies)


def test_report_drops_the_figure_a_split_replaced(tmp_path):
    """A study that gains arms with extra rows splits its section in two: the one figure the
    last report linked goes, two take its place; a PNG the report never linked stays."""
    study = tmp_path / "study"
    table = results_table(study)
    base = fake_rows()[0] | {"teacher": "t@abc", "kind": "hsk", "axis": "config", "hsk": "full"}
    base |= {"hsk_fraction": 0.7}
    for seed in (0, 1):
        table.append(base | {"config": "full", "seed": seed})
    (study / "mine.png").write_bytes(b"a user's figure")
    write_report(study)
    assert sorted(p.name for p in study.glob("*.png")) == ["mine.png", "sst2-t-abc.png"]
    for seed in (0, 1):
        table.append(base | {"config": "full+labelled8", "seed": seed})
    md = write_report(study).read_text()
    pngs = sorted(p.name for p in study.glob("*.png"))
    assert pngs == ["mine.png", "sst2-t-abc-labelled8.png", "sst2-t-abc-plain.png"]
    assert all(f"]({name})" in md for name in pngs[1:])


def test_figure_plots_listed_configurations_and_skips_baselines_alone(tmp_path):
    """Arms on no axis (the listed configurations: full HSK, `1l_10t_0.1h`, joint ones) get a
    panel of their own, one point each; a section of baselines alone has no point: no figure,
    no link."""
    curves = results_table(tmp_path / "curves")
    for row in fake_rows():
        if row["axis"] != "length":
            curves.append(row)
    joint = {"config": "2l_5t_0.2h/a/m/l_top4", "axis": "joint", "hsk": "2l_5t_0.2h"}
    curves.append(fake_rows()[6] | joint | {"hsk_fraction": 0.01})
    shown = panels(group_arms(curves.rows())[("sst2", "t@abc")])
    # the full arm is on every axis (its 100% point) and listed; the slice and the joint arm
    # are listed only
    assert [title for title, _ in shown] == ["depth", "width", "configurations"]
    listed = shown[-1][1]
    assert {k: [a.config for a in v] for k, v in listed.items()} == {
        "full": ["full/-/-/l_top4"],
        "1l_10t_0.1h": ["1l_10t_0.1h/a/m/l_top4"],
        "2l_5t_0.2h": ["2l_5t_0.2h/a/m/l_top4"],
    }
    study = tmp_path / "study"
    table = results_table(study)
    base = fake_rows()[0] | {"teacher": "t@abc"}
    for seed in (0, 1):
        slice_ = {"config": "1l_10t_0.1h/a/m/l_top4", "kind": "hsk", "axis": "config"}
        table.append(base | slice_ | {"hsk": "1l_10t_0.1h", "hsk_fraction": 0.002, "seed": seed})
    assert "![marginal utility](sst2-t-abc.png)" in write_report(study).read_text()
    assert (study / "sst2-t-abc.png").stat().st_size > 10_000
    baselines = tmp_path / "baselines"
    for seed in (0, 1):
        results_table(baselines).append(base | {"config": "pred", "kind": "pred", "seed": seed})
    assert panels(group_arms(results_table(baselines).rows())[("sst2", "t@abc")]) == []
    md = write_report(baselines).read_text()
    assert "marginal utility" not in md and not list(baselines.glob("*.png"))


def test_log_summary_reads_how_a_run_learned():
    log = [
        {"stage": "hsk", "epoch": 0, "batch": 0, "step": 1, "loss": 0.6, "zero_loss": 0.5},
        {"stage": "hsk", "epoch": 0, "batch": 1, "step": 2, "loss": 0.4, "zero_loss": 0.5},
        {"stage": "hsk", "epoch": 0, "train_loss": 0.5, "zero_loss": 0.5, "dev": {"accuracy": 0.5}},
        {"stage": "hsk", "epoch": 1, "train_loss": 0.2, "zero_loss": 0.4, "dev": {"accuracy": 0.5}},
        {"stage": "pred", "epoch": 0, "batch": 0, "step": 5, "loss": 0.9},
        {"stage": "pred", "epoch": 0, "train_loss": 0.3, "dev": {"accuracy": 0.8}},
        {"stage": "pred", "epoch": 1, "train_loss": 0.25, "dev": {"accuracy": 0.85}},
    ]
    got = log_summary(log, "sst2")
    assert got["hsk_start"] == pytest.approx(1.2) and got["hsk_end"] == pytest.approx(0.5)
    assert got["dev_curve"] == "0.8000 0.8500" and got["train_end"] == 0.25
    # a log written before fit logged the all-zero prediction's loss: no shares, the rest
    old = [{k: v for k, v in r.items() if k != "zero_loss"} for r in log]
    assert log_summary(old, "sst2") == got | {"hsk_start": None, "hsk_end": None}
    assert log_summary([], "sst2") == dict.fromkeys(got)


def test_report_judges_the_studys_targets_and_shows_how_arms_learned(tmp_path):
    """A study.toml's [targets] are judged for its arm (met, met inside the spread, missed by
    how much, with fewer seeds said) in the task's main metric or the one they name; logs.csv's
    rows become the arms' learning table."""
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.toml").write_text(
        'study = "s"\ntasks = ["SST-2"]\nconfigs = ["full", "1l_10t_0.1h"]\n[targets]\n'
        'arm = "1l_10t_0.1h"\nof_teacher = 0.85\nover_ce = 0.09\nwithin_full = 0.005\n'
        '[fit]\ndevice = "cuda:7"\n'  # the sweep's machine's: the report reads [targets] alone
    )
    table = results_table(study)
    base = fake_rows()[0] | {"teacher": "t+ft@abc", "axis": "baseline", "hsk": ""}
    by_config = {
        "ce": ("ce", "", (0.70, 0.72)),
        "full/-/-/l_top4": ("hsk", "full", (0.81, 0.83)),
        "1l_10t_0.1h/a/m/l_top4": ("hsk", "1l_10t_0.1h", (0.80, 0.81, 0.82)),
    }
    for config, (kind, hsk, scores) in by_config.items():
        for seed, score in enumerate(scores):
            row = {"config": config, "kind": kind, "hsk": hsk, "seed": seed, "dev_accuracy": score}
            row["dev_f1"] = score + 0.1  # another metric [targets] may name
            table.append(base | row | ({"axis": "config"} if hsk else {}))
    tune = {"task": "sst2", "teacher": "t+ft@abc", "cache": "teacher", "how": "finetune"}
    tune |= {"source": "t", "seconds": 60.0, "device": "cpu", "bytes": 1, "rows": None}
    tune |= {"dev": json.dumps({"accuracy": 0.9}), "code_version": "x", "timestamp": "t"}
    builds_table(study).append(tune)
    logs = logs_table(study)
    for seed, (start, curve) in enumerate([(1.0, "0.70 0.80"), (0.9, "0.72 0.82"), (None, "")]):
        key = {"task": "sst2", "teacher": "t+ft@abc", "config": "1l_10t_0.1h/a/m/l_top4"}
        logs.append(key | {"seed": seed, "hsk_start": start, "hsk_end": 0.4, "dev_curve": curve})
    md = write_report(study).read_text()
    assert (
        "### Targets\n\n`1l_10t_0.1h` + prediction, dev accuracy, mean over seeds:\n\n"
        "- >= 85% of the teacher's (>= 0.7650): 0.8100 +- 0.0100 (n=3): met\n"
        "- >= CE-only + 9 points (>= 0.8000): 0.8100 +- 0.0100 (n=3): met inside the seeds' "
        "spread\n"
        "- within 0.5 points of full HSK (>= 0.8150): 0.8100 +- 0.0100 (n=3): **missed by 0.5 "
        "points**\n- why, from its logs: best at its last epoch in 2 of 2 seeds (it wanted more "
        "epochs); its HSK loss ends its stage at 40% of an all-zero prediction's, from 95% at "
        "step 1\n\n### Claims"
    ) in md
    # a log without the all-zero prediction's loss (older fits) or a dev curve: its n said
    assert "| `1l_10t_0.1h/a/m/l_top4` | 3 | 95% (n=2) | 40% | 0.7100 0.8100 |" in md
    assert "| `ce` |" not in md.split("### How the arms learned")[1]  # no log, no line
    # fewer than 3 seeds: said; a bad [targets]: refused by name
    table.path.write_text("\n".join(table.path.read_text().splitlines()[:-1]) + "\n")
    assert "- 2 seeds so far: a target is judged on 3" in write_report(study).read_text()
    # a miss under 0.05 points is printed to two decimals, not as "missed by 0.0"
    (study / "study.toml").write_text(
        'study = "s"\ntasks = ["SST-2"]\n[targets]\narm = "1l_10t_0.1h"\nwithin_full = 0.0146\n'
    )
    assert (
        "- within 1.46 points of full HSK (>= 0.8054): 0.8050 +- 0.0071 (n=2): **missed by 0.04 "
        "points**\n"
    ) in write_report(study).read_text()
    # a bound set from CE-only above the teacher's own score (0.9): said, with the miss
    (study / "study.toml").write_text(
        'study = "s"\ntasks = ["SST-2"]\n[targets]\narm = "1l_10t_0.1h"\nover_ce = 0.25\n'
    )
    assert (
        "- >= CE-only + 25 points (>= 0.9600): 0.8050 +- 0.0071 (n=2): **missed by 15.5 points**;"
        " the bound is above the teacher's own 0.9000, which its students rarely pass\n"
    ) in write_report(study).read_text()
    # targets in another metric than the task's main one: judged in it, the teacher's unknown
    (study / "study.toml").write_text(
        'study = "s"\ntasks = ["SST-2"]\n[targets]\narm = "1l_10t_0.1h"\nmetric = "f1"\n'
        "over_ce = 0.09\nunder_teacher = 0.05\n"
    )
    assert (
        "`1l_10t_0.1h` + prediction, dev f1, mean over seeds:\n\n"
        "- >= the teacher's - 5 points: not judged, needs the teacher's dev score\n"
        "- >= CE-only + 9 points (>= 0.9000): 0.9050 +- 0.0071 (n=2): met inside the seeds' "
        "spread\n"
    ) in write_report(study).read_text()
    (study / "study.toml").write_text(
        'study = "s"\ntasks = ["SST-2"]\n[targets]\narm = "1l_10t_0.1h"\nmetric = "matthews"\n'
        "over_ce = 0.09\n"
    )
    assert "- not judged: this task's runs score no matthews\n" in write_report(study).read_text()
    (study / "study.toml").write_text(
        'study = "s"\ntasks = ["SST-2"]\n[targets]\narm = "2l_10t_0.1h"\nof_teacher = 95\nx = 1\n'
        'metric = "mcc"\n'
    )
    with pytest.raises(ConfigError) as e:
        write_report(study)
    assert str(e.value).endswith(
        "unknown key 'targets.x'; targets.metric 'mcc' must be one of accuracy, f1, matthews, "
        "pearson, spearman; targets.of_teacher = 95 must be a number in (0, 1]; "
        "targets.arm '2l_10t_0.1h' must be one of configs ['full', '1l_10t_0.1h']"
    )


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.parent.name for p in ROOT.glob("reports/*/study.toml")))
def test_every_committed_study_file_loads(name):
    """A committed study that its own sweep (or its report's [targets] or anchors) would refuse
    is stale."""
    path = str(ROOT / "reports" / name / "study.toml")
    grid = load_grid(path, {})
    assert grid.study == f"reports/{name}"
    assert (grid.anchors is None) == (read_anchors(path) == [])


ANCHOR = (
    '[[anchors]]\nname = "TinyBERT4"\ntask = "sst2"\nmetric = "accuracy"\nscore = 0.926\n'
    'split = "test"\nteacher = 0.935\nhad = "general distillation"\nsource = "Jiao et al."\n'
)


def test_report_sets_the_arms_beside_the_published_anchors(tmp_path):
    """The anchors file a study names (relative to the study file) gives a table: each published
    student against its own teacher, then this study's best arm against its own; an anchor of a
    task the study did not run is left out."""
    study = tmp_path / "study"
    study.mkdir()
    (study / "study.toml").write_text('study = "s"\ntasks = ["SST-2"]\nanchors = "../a.toml"\n')
    mrpc = ANCHOR.replace("TinyBERT4", "Other").replace('"sst2"', '"mrpc"')
    (tmp_path / "a.toml").write_text(ANCHOR + mrpc)
    for row in fake_rows():
        results_table(study).append(row)
    tune = {"task": "sst2", "teacher": "t@abc", "cache": "teacher", "how": "finetune"}
    tune |= {"source": "t", "seconds": 60.0, "device": "cpu", "bytes": 1, "rows": None}
    tune |= {"dev": json.dumps({"accuracy": 0.9}), "code_version": "x", "timestamp": "t"}
    builds_table(study).append(tune)
    md = write_report(study).read_text()
    assert (
        "| TinyBERT4 | sst2 | test | accuracy | 0.9260 | 0.9350 | 99.0% | general distillation "
        "| Jiao et al. |" in md
    )
    # the best arm of fake_rows by mean accuracy: 1l_10t_0.1h at 0.86, 95.6% of 0.9
    assert (
        "| here: `tinybert4`, `1l_10t_0.1h/a/m/l_top4` | sst2 | dev | accuracy | 0.8600 +- 0.0141 "
        "(n=2) | 0.9000 | 95.6% | no extra rows; teacher `t@abc` | here |" in md
    )
    assert "| Other |" not in md
    # compare: every study's anchors once, then each study's best arm against its teacher
    other = tmp_path / "other"
    (other).mkdir()
    (other / "study.toml").write_text((study / "study.toml").read_text())
    for row in fake_rows()[:2]:  # CE-only's two seeds; the teacher from the first's builds
        results_table(other).append(row)
    md = compare([study, other])
    assert md.count("| TinyBERT4 | sst2 | test |") == 1
    assert "| `study`, `1l_10t_0.1h/a/m/l_top4` | sst2 | dev | accuracy | 0.8600 +- 0.0141" in md
    assert (
        "| `other`, `ce` | sst2 | dev | accuracy | 0.8100 +- 0.0141 (n=2) | 0.9000 | 90.0% | "
        "teacher `t@abc` | here |" in md
    )


def test_a_bad_anchors_file_is_refused_naming_every_problem(tmp_path):
    config = tmp_path / "study.toml"
    config.write_text('study = "s"\ntasks = ["SST-2"]\nanchors = "a.toml"\n')
    with pytest.raises(ConfigError, match=r"anchors file .*a.toml not found; fix the path"):
        read_anchors(str(config))
    bad = ANCHOR.replace("score = 0.926", "score = 92.6").replace('"accuracy"', '"acc"')
    bad = bad.replace('split = "test"', 'split = "val"\nyear = 2020').replace(
        'name = "TinyBERT4"\n', ""
    )
    (tmp_path / "a.toml").write_text(bad)
    with pytest.raises(ConfigError) as e:
        read_anchors(str(config))
    assert str(e.value) == (
        f"{tmp_path / 'a.toml'}: anchors[0]: unknown key 'year'; anchors[0]: missing 'name'; "
        "anchors[0]: metric 'acc' must be one of accuracy, f1, matthews, pearson, spearman; "
        "anchors[0]: split 'val' must be dev or test; anchors[0]: score = 92.6 must be a "
        "fraction in (0, 1] (86.4 is 0.864)"
    )
