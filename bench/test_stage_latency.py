"""Per-stage latency of every engine configuration (vision, prefill, decode step, adapter, denoising step, VAE)."""
import pytest

from foresight_engine.bench.contenders import ENGINE_CONFIGS
from foresight_engine.bench.runner import stage_result
from foresight_engine.bench.stages import STAGES, stage_calls

_calls = {}


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("config", ENGINE_CONFIGS, ids=lambda c: c.name)
def test_stage(benchmark, bench_context, options, record, preset, config, stage):
    ctx = bench_context(preset)
    if (preset, config.name) not in _calls:
        _calls[preset, config.name] = stage_calls(ctx.engine(config), ctx.inputs)
    if stage not in _calls[preset, config.name]:
        pytest.skip(f"preset {preset} has no {stage} stage (the hybrid encoder's)")
    rounds = options(preset).stage
    benchmark.group = f"{preset}/stage/{stage}"
    benchmark.pedantic(_calls[preset, config.name][stage], rounds=rounds.rounds, warmup_rounds=rounds.warmup,
                       iterations=1)
    record(benchmark, stage_result(ctx, config, stage, benchmark.stats.stats.data))
