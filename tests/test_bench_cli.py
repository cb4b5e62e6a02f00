"""`hsktrain bench`'s sub-commands: the old flag spellings name the new ones, each sub-command
takes only its own options, the one verdict every target gets (undecided within a spread), and
the step bench's interleaved rounds on fake clocks. Nothing here measures."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from hsktrain.bench.step import step_figures
from hsktrain.bench.step_writer import shortfalls
from hsktrain.bench.timer import interleaved, median_spread
from hsktrain.bench.verdict import verdict, verdicts
from hsktrain.bench.writer import targets_markdown
from hsktrain.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ([], "hsktrain bench step"),
        (["--preset", "tiny", "--steps", "3"], "hsktrain bench step --preset tiny --steps 3"),
        (
            ["--preset", "minilm", "--no-rss", "--remote"],
            "hsktrain bench step --preset minilm --no-rss --remote",
        ),
        (["--build", "--results", "R.md"], "hsktrain bench build --results R.md"),
        (["--e2e", "--data", "my glue/MRPC"], "hsktrain bench e2e --data 'my glue/MRPC'"),
    ],
)
def test_an_old_spelling_is_one_line_naming_the_new_one(old, new):
    r = runner.invoke(app, ["bench", *old])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert lines[0] == (
        "error: `hsktrain bench` takes the bench as a sub-command "
        f"(step, build, e2e, reader, inference): use `{new}`"
    )


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["step", "--teacher", "x", "--limit", "5"], "--teacher"),
        (["e2e", "--preset", "tiny", "--steps", "3"], "--preset"),
        (["build", "--preset", "tiny"], "--preset"),
        (["build", "--plot", "p.png"], "--plot"),
    ],
)
def test_a_sub_command_refuses_another_benchs_option(args, option):
    r = runner.invoke(app, ["bench", *args])
    assert r.exit_code == 2 and f"No such option: {option}" in r.output, r.output


def test_verdict_spells_the_bound_and_judges_it():
    assert verdict(1.05, "<=", 1.05) == {"value": 1.05, "target": "<= 1.05", "met": True}
    assert verdict(0.949, ">=", 0.95) == {"value": 0.949, "target": ">= 0.95", "met": False}
    assert verdict(300, ">=", 300.0)["target"] == ">= 300.0"
    # every bound with a figure, in the bounds' order; a figure not measured gets no verdict
    bounds = {"b": ("<=", 1.0), "rss": ("<=", 0.1), "a": (">=", 2.0)}
    assert list(verdicts({"a": 3.0, "b": 1.5}, bounds)) == ["b", "a"]
    assert [v["met"] for v in verdicts({"a": 3.0, "b": 1.5}, bounds).values()] == [False, True]


def test_a_bound_within_the_spread_is_undecided():
    assert verdict(1.04, "<=", 1.05, 0.02) == {
        "value": 1.04,
        "target": "<= 1.05",
        "met": None,
        "spread": 0.02,
    }
    assert verdict(1.02, "<=", 1.05, 0.02)["met"] is True  # the whole interval meets it
    assert verdict(1.08, "<=", 1.05, 0.02)["met"] is False
    assert verdict(0.96, ">=", 0.95, 0.02)["met"] is None
    targets = verdicts({"a": 1.04, "b": 2.0}, {"a": ("<=", 1.05), "b": ("<=", 1.0)}, {"a": 0.02})
    assert "spread" not in targets["b"]  # a figure without a spread is judged exactly
    assert targets_markdown(targets)[2:] == [
        "| a | 1.040 +- 0.020 | <= 1.05 | undecided |",
        "| b | 2.000 | <= 1.0 | **no** |",
    ]
    result = {"targets": targets, "offline_over_bare": 1.04, "speedup": 1.0}
    assert shortfalls(result)[2] == (
        "- `a` undecided (1.040 +- 0.020, bound <= 1.05): the steps' spread in this run holds "
        "the bound; rerun on a quieter machine or with more --steps."
    )


def test_a_missed_stall_is_explained_by_the_serial_read():
    bounds = {"stall_fraction": ("<=", 0.02), "speedup": (">=", 3.4)}
    targets = verdicts({"stall_fraction": 0.133, "speedup": 6.2}, bounds)
    result = {
        "targets": targets,
        "offline_over_bare": 1.12,
        "speedup": 6.2,
        "offline_stall_ms": 2.25,
        "step_ms": {"bare": 15.2},
        "device": "cuda",
    }
    lines = shortfalls(result)
    assert lines[2] == (
        "- The reader's 2.25 ms a step is read inside the timed offline step, before it (no "
        "read-ahead), beside a 15.2 ms bare step on cuda, so it adds to every ratio above. `fit` "
        "reads the next batches on a thread while a step runs; `hsktrain bench reader` sets the "
        "reader's rows/s beside the step's, so it says whether that thread keeps up."
    )
    assert lines[3].startswith("- `stall_fraction` missed in this run (0.133")
    met = {"targets": verdicts({"stall_fraction": 0.01, "speedup": 6.2}, bounds)}
    assert shortfalls({**result, **met}) == []


def _fake_clocks(calls: list[str], seconds: dict[str, list[float]]) -> dict:
    """Clocks that record their calls and return the given step seconds (stall 1/10 of it)."""

    def clock(name: str):
        left = iter(seconds[name])

        def one_step():
            calls.append(name)
            t = next(left, None)
            return None if t is None else (t, t / 10)

        return one_step

    return {name: clock(name) for name in seconds}


def test_interleaved_times_one_step_of_every_side_per_round_after_warmup():
    sides = ["bare", "offline", "online", "offline_int8"]
    seconds = {name: [10.0 * k + r for r in range(3)] for k, name in enumerate(sides, 1)}
    calls: list[str] = []
    out = interleaved(_fake_clocks(calls, seconds), warmup=1, rounds=2)
    assert calls == sides * 3  # bare, offline, online, int8, then again
    assert out == {n: [(t, t / 10) for t in seconds[n][1:]] for n in sides}  # warm-up dropped
    calls.clear()
    short = dict(seconds, online=[1.0])
    with pytest.raises(ValueError, match="side 'online' ran out of batches in round 1"):
        interleaved(_fake_clocks(calls, short), warmup=1, rounds=2)


def test_median_spread_is_the_median_and_its_notch():
    median, spread = median_spread([5.0, 1.0, 4.0, 2.0, 3.0])
    assert median == 3.0
    assert spread == pytest.approx(1.57 * (4.0 - 2.0) / math.sqrt(5))
    assert median_spread([2.0, 2.0, 2.0]) == (2.0, 0.0)


def test_step_figures_judge_ratios_by_their_per_round_values():
    rounds = {
        "bare": [(1.0, 0.0), (2.0, 0.0), (1.0, 0.0)],
        "offline": [(1.1, 0.01), (2.2, 0.02), (1.1, 0.01)],
        "online": [(4.0, 0.0), (8.0, 0.0), (4.0, 0.0)],
        "offline_int8": [(1.0, 0.0), (2.0, 0.0), (1.0, 0.0)],
    }
    f = step_figures(rounds)
    assert f["step_ms"] == {
        "bare": 1000.0,
        "offline": 1100.0,
        "online": 4000.0,
        "offline_int8": 1000.0,
    }
    # load doubled the second round on every side: each side spreads, every ratio does not
    assert f["step_spread_ms"]["bare"] == pytest.approx(1.57 * 500.0 / math.sqrt(3))
    assert f["offline_over_bare"] == pytest.approx(1.1)
    assert f["speedup"] == pytest.approx(4.0 / 1.1)
    assert f["efficiency"] == pytest.approx(1.0 / 1.1)
    assert f["offline_stall_ms"] == pytest.approx(10.0)
    assert f["stall_fraction"] == pytest.approx(0.01 / 1.1)
    assert f["spreads"] == pytest.approx(
        dict.fromkeys(
            ["offline_over_bare", "speedup", "ceiling", "efficiency", "offline_int8_over_bare"],
            0.0,
        )
        | {"stall_fraction": 0.0}
    )
