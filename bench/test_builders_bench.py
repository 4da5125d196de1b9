"""Builders bench: eager bf16 vs fp32 artifacts of the small preset, per stage, in the same process.

Run: `python -m pytest bench/test_builders_bench.py -q -s` (prints the bf16/fp32 ratios; pytest-benchmark table).
The artifacts are built once (gate off: this measures speed; tests/ check accuracy) and loaded with Engine's loader.
"""
import pytest
import torch

from foresight_engine.builders.build import build
from foresight_engine.engine.artifact_loader import load_model
from foresight_engine.models.export_spec import BuildShape, export_specs
from foresight_engine.models.glp import GLPModel

PRECISIONS = ("fp32", "bf16")
STAGES = ("denoise", "prefill", "vae_decode")
MEDIANS: dict[tuple[str, str], float] = {}


@pytest.fixture(scope="module")
def small():
    model = GLPModel.from_preset("small", 0)
    return model, BuildShape.for_config(model.config)


@pytest.fixture(scope="module")
def loaded(small, tmp_path_factory):
    model, shape = small
    root = tmp_path_factory.mktemp("bench_art")
    return {p: load_model(build(model, root / p, backend="eager", precision=p, shape=shape, steps=2,
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
    MEDIANS[(precision, stage)] = benchmark.stats.stats.median


def test_bf16_speedup_report():
    """Not an assertion on speed (timings are noisy here): prints fp32/bf16 median ratios from this run."""
    for stage in STAGES:
        if ("fp32", stage) in MEDIANS and ("bf16", stage) in MEDIANS:
            ratio = MEDIANS[("fp32", stage)] / MEDIANS[("bf16", stage)]
            print(f"small {stage}: fp32 {MEDIANS[('fp32', stage)] * 1e3:.1f} ms, bf16 "
                  f"{MEDIANS[('bf16', stage)] * 1e3:.1f} ms, speed-up x{ratio:.2f}")
