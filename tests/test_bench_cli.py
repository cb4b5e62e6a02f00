"""`hsktrain bench`'s sub-commands: the old flag spellings name the new ones, each sub-command
takes only its own options, and the one verdict every target gets. Nothing here measures."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hsktrain.bench.verdict import verdict, verdicts
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
        f"error: `hsktrain bench` takes the bench as a sub-command (step, build, e2e): use `{new}`"
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
