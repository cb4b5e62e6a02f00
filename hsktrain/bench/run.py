"""Which config, measurement and report each `hsktrain bench` sub-command runs: the one library
call the CLI makes once it has parsed the options."""

from __future__ import annotations

from collections.abc import Callable

from hsktrain.bench.build import BuildBenchConfig, run_build_bench
from hsktrain.bench.build_writer import BUILD
from hsktrain.bench.e2e import E2EConfig, run_e2e
from hsktrain.bench.e2e_writer import E2E
from hsktrain.bench.inference import InferenceBenchConfig, run_inference_bench
from hsktrain.bench.inference_writer import INFERENCE
from hsktrain.bench.reader import ReaderBenchConfig, run_reader_bench
from hsktrain.bench.reader_writer import READER
from hsktrain.bench.step import StepBenchConfig, run_step_bench
from hsktrain.bench.step_writer import STEP
from hsktrain.bench.writer import Report

CONFIGS = {
    "step": StepBenchConfig,
    "build": BuildBenchConfig,
    "e2e": E2EConfig,
    "reader": ReaderBenchConfig,
    "inference": InferenceBenchConfig,
}


def run_bench(name: str, fields: dict, log: Callable[[str], None]) -> tuple[dict, Report]:
    """Run the bench `name` with the settings given.

    Args:
        fields: its config's fields that were set; the others keep the config's defaults.
        log: where the long benches (e2e, reader) report each stage as it starts.

    Returns:
        the result (figures and `targets`) and how it reads (`writer.finish` writes it).
    """
    cfg = CONFIGS[name](**fields)
    if name == "step":
        return run_step_bench(cfg), STEP
    if name == "build":
        return run_build_bench(cfg), BUILD
    if name == "reader":
        return run_reader_bench(cfg, log), READER
    if name == "inference":
        return run_inference_bench(cfg), INFERENCE
    return run_e2e(cfg, log), E2E
