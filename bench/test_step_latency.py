"""One whole reasoning step: the peers (naive, best-peer) first, then every engine configuration."""
import pytest

from foresight_engine.bench.contenders import contenders
from foresight_engine.bench.runner import end_to_end_result


@pytest.mark.parametrize("contender", contenders(), ids=lambda c: c.name)
def test_end_to_end(benchmark, bench_context, options, record, preset, contender):
    ctx = bench_context(preset)
    step = contender.step_fn(ctx)
    rounds = options(preset).end_to_end
    benchmark.group = f"{preset}/end_to_end"
    last = benchmark.pedantic(step, rounds=rounds.rounds, warmup_rounds=rounds.warmup, iterations=1)
    assert last.frames.ndim == 4 and last.token_ids  # a step that produced nothing is not a measurement
    record(benchmark, end_to_end_result(ctx, contender, benchmark.stats.stats.data, last))
