"""`hsktrain bench build` on a tiny teacher: it runs, reports every figure and both targets,
and refuses too few rows. Timings are never asserted; the token counts are."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import write_sst2
from hsktrain.bench.build import padded_tokens
from hsktrain.bench.build_writer import BUILD
from hsktrain.bench.writer import markdown
from hsktrain.cli import app

runner = CliRunner()


def test_build_bench_tiny_teacher(tmp_path, tiny_bert):
    data = write_sst2(tmp_path / "SST-2", n=80)
    md = tmp_path / "R-build.md"
    args = f"bench build --data {data} --teacher {tiny_bert} --limit 70 --hsk 1l_4t_0.25h"
    args += f" --workdir {tmp_path / 'w'} --results {md} --json"
    r = runner.invoke(app, args.split())
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{") :])
    (t,) = out["tasks"]
    assert t["task"] == "sst2" and t["rows"] == 70 and t["timed_rows"] == 70 - 32
    for k in ("forward_data_rows_per_s", "forward_length_rows_per_s", "build_rows_per_s"):
        assert t[k] > 0, k
    passes = t["passes_s"]  # seconds of every timed pass, three rounds of each kind
    assert {k: len(v) for k, v in passes.items()} == dict.fromkeys(passes, 3)
    per_round = [a / c for a, c in zip(passes["data"], passes["build"], strict=True)]
    assert t["build_over_data_forward"] == pytest.approx(statistics.median(per_round))
    # the fixture's sentences vary in length: sorting them cuts padding
    assert t["real_tokens"] <= t["padded_tokens"]["length"] < t["padded_tokens"]["data"]
    agree = t["agreement"]  # against a data-order build of the same rows: rounding only
    assert agree["values_compared"] > 0 and agree["values_max_fp16_steps"] <= 1.0
    assert t["build_data_order_rows_per_s"] > 0
    assert set(out["targets"]) == {"sst2 build_over_data_forward", "sst2 build_over_length_forward"}
    text = md.read_text()
    assert "| (c) / (a), target >= 1.5 |" in text and "| sst2 build_over_data_forward |" in text
    # a missed (c)/(a) target is explained by the run's own token counts
    key = "sst2 build_over_data_forward"
    miss = out["targets"][key] | {"value": 1.2, "met": False}
    text = markdown(out | {"targets": out["targets"] | {key: miss}}, BUILD, "cmd")
    bound = t["padded_tokens"]["data"] / t["padded_tokens"]["length"]
    assert "Not met on sst2: 1.20x against 1.5x (25% short)" in text
    assert f"carry only {bound:.2f}x the tokens of length-sorted ones" in text


def test_padded_tokens_counts_each_batch_at_its_longest_row():
    lengths = np.array([2, 9, 3, 8])
    assert padded_tokens(lengths, [np.array([0, 1]), np.array([2, 3])]) == 2 * 9 + 2 * 8
    assert padded_tokens(lengths, [np.array([1, 3]), np.array([2, 0])]) == 2 * 9 + 2 * 3


def test_build_bench_refuses_too_few_rows():
    r = runner.invoke(app, ["bench", "build", "--limit", "32"])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    message = "--limit 32: `bench build` needs more rows than one batch (32)"
    assert r.exit_code == 1 and len(lines) == 1 and message in lines[0], r.output
