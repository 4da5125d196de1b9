"""pytest-benchmark suites: `python -m pytest bench/` (tiny only), `-m small` or FORESIGHT_BENCH_SMALL=1 for small.

Rounds are the CLI's `--quick` ones unless FORESIGHT_BENCH_FULL=1. Targets are reported at the end, never asserted.
"""
import os

import pytest
import torch

from foresight_engine.bench.contenders import BenchContext
from foresight_engine.bench.kernel_bench import RESULTS as KERNEL_RESULTS, kernel_table
from foresight_engine.bench.machine import cpu_model, machine_info, peaks
from foresight_engine.bench.runner import SuiteOptions, format_table, summarize
from foresight_engine.kernels import native_status


def pytest_configure(config):
    config.addinivalue_line("markers", "small: the small preset (slow; run with -m small or FORESIGHT_BENCH_SMALL=1)")


def pytest_collection_modifyitems(config, items):
    if "small" in (config.option.markexpr or "") or os.environ.get("FORESIGHT_BENCH_SMALL") == "1":
        return
    skip = pytest.mark.skip(reason="small preset: select with -m small or FORESIGHT_BENCH_SMALL=1")
    for item in items:
        if "small" in item.keywords:
            item.add_marker(skip)


PRESETS = [pytest.param("tiny", id="tiny"), pytest.param("small", id="small", marks=pytest.mark.small)]


def pytest_generate_tests(metafunc):
    """Every suite runs per preset."""
    if "preset" in metafunc.fixturenames:
        metafunc.parametrize("preset", PRESETS)
_contexts: dict[str, BenchContext] = {}
_results: dict[str, list] = {}


@pytest.fixture(scope="session")
def bench_context():
    """`bench_context(preset)`: one shared context (reference weights, inputs, built engines) per preset."""
    def get(preset: str) -> BenchContext:
        if preset not in _contexts:
            _contexts[preset] = BenchContext(preset)
        return _contexts[preset]
    return get


@pytest.fixture(scope="session")
def options():
    return lambda preset: SuiteOptions(preset, quick=os.environ.get("FORESIGHT_BENCH_FULL") != "1")


@pytest.fixture(scope="session")
def record():
    """Keep a `Result` for the ratio table; and put it in the benchmark's extra_info."""
    def add(benchmark, result) -> None:
        _results.setdefault(result.preset, []).append(result)
        benchmark.extra_info.update({k: v for k, v in vars(result).items() if k != "times_s"})
        benchmark.extra_info.update(machine=machine_info(), peaks_flops_per_s=peaks())
    return add


def pytest_terminal_summary(terminalreporter):
    if KERNEL_RESULTS:
        status = native_status()
        terminalreporter.write_sep("-", f"kernels (bench/test_kernels.py): medians of round-robin rounds, "
                                        f"{torch.get_num_threads()} threads, CPU path {status.isa}, {cpu_model()}")
        terminalreporter.write_line(kernel_table(KERNEL_RESULTS))
    for preset, results in _results.items():
        terminalreporter.write_sep("-", f"ratios, preset {preset} (targets reported, not asserted)")
        terminalreporter.write_line(format_table(summarize(preset, results, {}, 0.0)))
