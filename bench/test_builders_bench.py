"""Builders bench: eager bf16 vs fp32 artifacts of the small preset, per stage, in the same process.

Run: `python -m pytest bench/test_builders_bench.py -q -s` (prints the bf16/fp32 ratios; pytest-benchmark table).
The artifacts are built once (gate off: this measures speed; tests/ check accuracy) and loaded with Engine's loader.
"""
import pytest
import torch

from foresight_engine.builders.build import build
from foresight_engine.engine.artifact_loader import load_artifact
from foresight_engine.models.export_spec import BuildShape, export_specs
from foresight_engine.models.glp import GLPModel

PRECISIONS = ("fp32", "bf16")
STAGES = ("denoise", "prefill", "vae_decode")
STATS: dict[tuple[str, str], tuple[float, float]] = {}  # (precision, stage) -> (median, min) seconds


@pytest.fixture(scope="module")
def small():
    model = GLPModel.from_preset("small", 0)
    return model, BuildShape.for_config(model.config)


@pytest.fixture(scope="module")
def loaded(small, tmp_path_factory):
    model, shape = small
    root = tmp_path_factory.mktemp("bench_art")
    return {p: load_artifact(build(model, root / p, backend="eager", precision=p, shape=shape, steps=2,
                                gate=False).directory)[0] for p in PRECISIONS}


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_stage_latency(benchmark, small, loaded, precision, stage):
    model, shape = small
    spec = export_specs(model.config)[stage]
    module = spec.wrap(loaded[precision], shape)
    inputs = spec.sample_inputs(shape)

    def run():
        with torch.inference_mode():
            module(*inputs)
    benchmark.pedantic(run, rounds=5, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(precision=precision, stage=stage, torch=torch.__version__,
                                cpu_capability=torch.backends.cpu.get_cpu_capability(), threads=torch.get_num_threads())
    STATS[(precision, stage)] = (benchmark.stats.stats.median, benchmark.stats.stats.min)


def test_bf16_speedup_report():
    """Not an assertion on speed (timings are noisy here): prints fp32/bf16 ratios (of medians and of minimums,
    the latter less sensitive to other processes on a shared machine) from this run."""
    for stage in STAGES:
        if ("fp32", stage) in STATS and ("bf16", stage) in STATS:
            (f_med, f_min), (b_med, b_min) = STATS[("fp32", stage)], STATS[("bf16", stage)]
            print(f"small {stage}: median fp32 {f_med * 1e3:.0f} ms / bf16 {b_med * 1e3:.0f} ms = x{f_med / b_med:.2f}; "
                  f"min fp32 {f_min * 1e3:.0f} ms / bf16 {b_min * 1e3:.0f} ms = x{f_min / b_min:.2f}")


@pytest.mark.parametrize("backend", ["eager", "onnx"])
def test_tiny_build_and_load_time(benchmark, backend, tmp_path):
    """Build time (gate included) and load time of a tiny artifact; the first load is cold, later ones warm."""
    import time
    model = GLPModel.from_preset("tiny", 0)
    start = time.perf_counter()
    result = build(model, tmp_path / backend, backend=backend, precision="fp32")
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    load_artifact(result.directory)
    cold_s = time.perf_counter() - start
    benchmark.pedantic(load_artifact, args=(result.directory,), rounds=3, iterations=1)
    benchmark.extra_info.update(backend=backend, build_s=build_s, cold_load_s=cold_s)
    print(f"tiny {backend}: build {build_s:.1f} s (accuracy gate included), cold load {cold_s:.2f} s, "
          f"warm load {benchmark.stats.stats.median:.2f} s")
