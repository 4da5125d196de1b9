"""Runtime bench (small preset): pipelined vs sequential step latency in one run, text-only and video-only
latencies, the overlap fraction, thread splits, the static loop vs the eager loop, and the step cache.

    /work/main/.venv/bin/python -m pytest bench/test_runtime_bench.py -q -s -p no:cacheprovider

Targets are reported, never asserted: step <= max(text-only, video-only) + 15%. The summary (last test) prints
a table and writes bench/out/runtime_bench.json.
"""
from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from foresight_engine import Engine
from foresight_engine.engine.threads import ThreadSplit
from foresight_engine.models.glp import GLPModel

PROMPT = "What happens next? Describe the motion."
SETTINGS = dict(num_inference_steps=4)  # the small preset's 8 steps halved to keep the file at a few minutes
ROUNDS = dict(rounds=2, warmup_rounds=1, iterations=1)
RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def model() -> GLPModel:
    return GLPModel.from_preset("small", 0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)


def _record(name: str, benchmark, **extra) -> None:
    stats = benchmark.stats.stats
    RESULTS[name] = {"median_s": stats.median, "min_s": stats.min, "rounds": stats.rounds, **extra}
    benchmark.extra_info.update({"preset": "small", "torch": torch.__version__, "threads": torch.get_num_threads(),
                                 **extra})


def _text_only(engine: Engine, image) -> list[int]:
    request = engine.prepare(image, PROMPT, **SETTINGS)
    with torch.inference_mode():
        prefill = engine.prefill(request, engine.vision(request))
        return engine.decode_text(prefill, request.settings.max_new_tokens)


def _video_only(engine: Engine, image) -> np.ndarray:
    request = engine.prepare(image, PROMPT, **SETTINGS)
    with torch.inference_mode():
        prefill = engine.prefill(request, engine.vision(request))
        cond, mask = engine.adapt(prefill.world_latent)
        generator = torch.Generator().manual_seed(0)
        latents, grid = engine.denoise(request, cond, mask, generator)
        return engine.decode_video(latents, grid, generator)


def test_text_only(benchmark, model, image):
    benchmark.pedantic(_text_only, args=(Engine(model), image), **ROUNDS)
    _record("text_only", benchmark)


def test_video_only(benchmark, model, image):
    benchmark.pedantic(_video_only, args=(Engine(model), image), **ROUNDS)
    _record("video_only", benchmark)


def test_video_only_eager_loop(benchmark, model, image):
    benchmark.pedantic(_video_only, args=(Engine(model, static=False), image), **ROUNDS)
    _record("video_only_eager_loop", benchmark)


def test_step_sequential(benchmark, model, image):
    engine = Engine(model, overlap=False)
    benchmark.pedantic(lambda: engine.predict(image, PROMPT, **SETTINGS), **ROUNDS)
    _record("step_sequential", benchmark)


@pytest.mark.parametrize("split", [(2, 2, 1), (2, 2, 2), (2, 1, 1)], ids=lambda s: "front%d-video%d-text%d" % s)
def test_step_pipelined(benchmark, model, image, split):
    engine = Engine(model, threads=ThreadSplit(*split))
    overlaps = []

    def step():
        overlaps.append(engine.predict(image, PROMPT, **SETTINGS).timings.overlap_fraction())
    benchmark.pedantic(step, **ROUNDS)
    _record("step_pipelined_" + "front%d-video%d-text%d" % split, benchmark,
            overlap_fraction=statistics.median(overlaps))


def test_two_requests_back_to_back(benchmark, model, image):
    """Two requests from two threads: the second's vision + prefill runs while the first's video denoises."""
    from concurrent.futures import ThreadPoolExecutor
    engine = Engine(model)
    with ThreadPoolExecutor(2) as pool:
        benchmark.pedantic(lambda: list(pool.map(lambda s: engine.predict(image, PROMPT, seed=s, **SETTINGS), (0, 1))),
                           **ROUNDS)
    _record("two_requests_concurrent", benchmark)


@pytest.mark.parametrize("threshold", [0.05, 0.2])
def test_step_cache(benchmark, model, image, threshold):
    reference = _video_only(Engine(model), image)
    engine = Engine(model, step_cache=threshold)
    frames = benchmark.pedantic(_video_only, args=(engine, image), **ROUNDS)
    mse = np.mean((frames.astype(np.float64) - reference.astype(np.float64)) ** 2)
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)
    _record(f"video_only_step_cache_{threshold}", benchmark, psnr_db=psnr)


def test_summary():
    """Ratios from the runs above (same process, same weights and inputs)."""
    if "step_sequential" not in RESULTS:
        pytest.skip("run the whole file")
    r = {k: v["median_s"] for k, v in RESULTS.items()}
    pipelined = {k: v for k, v in r.items() if k.startswith("step_pipelined_")}
    best = min(pipelined, key=pipelined.get)
    bound = max(r["text_only"], r["video_only"])
    summary = {
        "machine": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
        "medians_s": r, "best_split": best,
        "pipelined_over_sequential": pipelined[best] / r["step_sequential"],
        "pipelined_over_max_text_video": pipelined[best] / bound,
        "target_met": pipelined[best] <= 1.15 * bound,
        "overlap_fraction": RESULTS[best]["overlap_fraction"],
        "static_loop_speedup": r["video_only_eager_loop"] / r["video_only"],
        "two_requests_over_two_sequential_steps": r["two_requests_concurrent"] / (2 * r["step_sequential"]),
        "step_cache": {k: {"speedup": r["video_only"] / v["median_s"], "psnr_db": v["psnr_db"]}
                       for k, v in RESULTS.items() if k.startswith("video_only_step_cache_")},
    }
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "runtime_bench.json").write_text(json.dumps(summary, indent=2))
    for name, median in sorted(r.items()):
        print(f"{name:45s} {median:8.3f} s")
    print(json.dumps({k: v for k, v in summary.items() if k != "medians_s"}, indent=2))
