"""`hsktrain bench reader` on a tiny given cache: every figure in its JSON and its results file,
and its refusals. Rates are measured but not asserted (they depend on the machine)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from hsktrain.cli import app

runner = CliRunner()
FAST = ["--seconds", "0.05", "--steps", "1", "--student", "tiny"]


def test_bench_reader_on_a_given_cache_reports_every_figure(fit_world, tmp_path):
    cache = str(fit_world["cache"])
    results = tmp_path / "R.md"
    args = ["bench", "reader", "--cache", cache, *FAST, "--workdir", str(tmp_path / "w")]
    r = runner.invoke(app, [*args, "--json", "--results", str(results)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{") :])
    assert out["cache"] == cache and out["rows"] == {"1l_4t_0.25h": 48}
    rates = out["rows_per_s"]["1l_4t_0.25h"]
    assert list(rates) == ["local"] and sorted(rates["local"]) == ["256", "32"]
    for b in ("32", "256"):
        assert sorted(rates["local"][b]) == ["plain", "prefetched"]
        assert all(v > 0 for v in rates["local"][b].values())
        assert out["step_rows_per_s"][b] > 0
        neck = out["bottleneck"]["1l_4t_0.25h"][b]
        assert neck["side"] in ("reader", "step")
        assert neck["reader_over_step"] == rates["local"][b]["plain"] / out["step_rows_per_s"][b]
    assert out["bytes_per_row"]["1l_4t_0.25h"] > 0
    # no full cache and no 1l_10t_0.1h cache given: no disk figure, nothing to judge
    assert "disk" not in out and out["targets"] == {}
    text = results.read_text()
    assert text.startswith("# Benchmark: the cache reader\n")
    assert "Disk read bandwidth: not measured (no local `full` cache in this run)." in text
    assert "| `1l_4t_0.25h` | " in text and " | 32 | " in text and " | 256 | " in text


def test_bench_reader_refuses_cache_with_remote_or_teacher(fit_world):
    cache = str(fit_world["cache"])
    for extra in (["--remote"], ["--teacher", "x"]):
        r = runner.invoke(app, ["bench", "reader", "--cache", cache, *extra])
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 1 and lines == [
            "error: --cache times that cache as it is: drop --remote and --teacher"
        ], r.output


def test_bench_reader_names_a_missing_cache(tmp_path):
    r = runner.invoke(app, ["bench", "reader", "--cache", str(tmp_path / "nope"), *FAST])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 1 and lines == [
        f"error: {tmp_path / 'nope'}: no cache here (no zarr.json); build one with `hskcache build`"
    ], r.output
