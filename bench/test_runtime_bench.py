"""Runtime bench (small preset): pipelined vs sequential step latency, text-only and video-only latencies, the
overlap fraction, CPU thread splits, the static loop vs the eager loop, two requests in flight, the step cache.

    /work/main/.venv/bin/python -m pytest bench/test_runtime_bench.py -q -s -p no:cacheprovider

The variants a ratio compares are timed *interleaved* inside one benchmark (round-robin, one untimed warm-up
each), so a ratio holds on a machine whose load changes while it runs. Targets are reported, never asserted:
step <= max(text-only, video-only) + 15%. The summary prints a table and writes bench/out/runtime_bench.json.
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from foresight_engine import Engine
from foresight_engine.engine.threads import ThreadSplit
from foresight_engine.models.glp import GLPModel

PROMPT = "What happens next? Describe the motion."
SETTINGS = dict(num_inference_steps=4)  # the small preset's 8 steps halved to keep the file at a few minutes
ROUNDS = 3
RESULTS: dict[str, dict] = {}  # variant -> median seconds and extras, for the summary


@pytest.fixture(scope="module")
def model() -> GLPModel:
    return GLPModel.from_preset("small", 0)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)


def _interleaved(benchmark, variants: dict[str, Callable[[], object]]) -> dict[str, object]:
    """Time every variant once per round, round-robin; record medians. Returns each variant's last output."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    outputs = {name: fn() for name, fn in variants.items()}  # warm-up, untimed

    def one_round():
        for name, fn in variants.items():
            start = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        RESULTS[name] = {"median_s": median, "min_s": min(times[name])}
    benchmark.extra_info.update({"preset": "small", "settings": SETTINGS, "torch": torch.__version__,
                                 "medians_s": medians})
    return outputs


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
        latents = engine.denoise(request, cond, mask, generator)
        return engine.decode_video(latents, request.geometry, generator)


def test_pipelined_vs_sequential(benchmark, model, image):
    """The point of overlap: one step vs its text-only and video-only parts, and vs the branches in sequence."""
    engine, sequential = Engine(model), Engine(model, overlap=False)
    out = _interleaved(benchmark, {
        "text_only": lambda: _text_only(engine, image),
        "video_only": lambda: _video_only(engine, image),
        "step_sequential": lambda: sequential.predict(image, PROMPT, **SETTINGS),
        "step_pipelined": lambda: engine.predict(image, PROMPT, **SETTINGS),
    })
    RESULTS["step_pipelined"]["overlap_fraction"] = out["step_pipelined"].timings.overlap_fraction()
    RESULTS["step_pipelined"]["spans"] = out["step_pipelined"].timings.spans_dict()


def test_thread_splits(benchmark, model, image):
    """ThreadSplit(front, video, text) for the overlapped step; the first is the default on 2 cores."""
    splits = [(2, 2, 1), (2, 1, 1), (2, 2, 2)]
    engines = {"split_front%d_video%d_text%d" % s: Engine(model, threads=ThreadSplit(*s)) for s in splits}
    _interleaved(benchmark, {name: (lambda e=e: e.predict(image, PROMPT, **SETTINGS)) for name, e in engines.items()})


def test_static_vs_eager_loop(benchmark, model, image):
    static, eager = Engine(model), Engine(model, static=False)
    _interleaved(benchmark, {"video_only_static_loop": lambda: _video_only(static, image),
                             "video_only_eager_loop": lambda: _video_only(eager, image)})


def test_two_requests_in_flight(benchmark, model, image):
    """Two requests from two threads (the second's vision + prefill runs while the first's video denoises) vs
    the same two one after the other."""
    engine = Engine(model)
    with ThreadPoolExecutor(2) as pool:
        _interleaved(benchmark, {
            "two_requests_concurrent": lambda: list(pool.map(
                lambda s: engine.predict(image, PROMPT, seed=s, **SETTINGS), (0, 1))),
            "two_requests_serial": lambda: [engine.predict(image, PROMPT, seed=s, **SETTINGS) for s in (0, 1)],
        })


def test_step_cache(benchmark, model, image):
    """First-block cache: speed and frame PSNR against the uncached run (same seed)."""
    thresholds = (0.05, 0.2)
    engines = {"video_only_uncached": Engine(model),
               **{f"video_only_step_cache_{t}": Engine(model, step_cache=t) for t in thresholds}}
    out = _interleaved(benchmark, {name: (lambda e=e: _video_only(e, image)) for name, e in engines.items()})
    reference = out["video_only_uncached"].astype(np.float64)
    for t in thresholds:
        name = f"video_only_step_cache_{t}"
        mse = np.mean((out[name].astype(np.float64) - reference) ** 2)
        RESULTS[name]["psnr_db"] = float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def test_summary():
    """Ratios of variants timed interleaved in the same benchmark (same weights and inputs)."""
    if "step_pipelined" not in RESULTS:
        pytest.skip("run the whole file")
    r = {k: v["median_s"] for k, v in RESULTS.items()}
    bound = max(r["text_only"], r["video_only"])
    summary = {
        "machine": platform.processor() or platform.machine(), "cores": torch.get_num_threads(),
        "settings": SETTINGS, "medians_s": r,
        "pipelined_over_sequential": r["step_pipelined"] / r["step_sequential"],
        "pipelined_over_max_text_video": r["step_pipelined"] / bound,
        "target_met": r["step_pipelined"] <= 1.15 * bound,
        "overlap_fraction": RESULTS["step_pipelined"]["overlap_fraction"],
        "spans_s": RESULTS["step_pipelined"]["spans"],
        "static_loop_speedup": r.get("video_only_eager_loop", float("nan")) / r.get("video_only_static_loop", 1),
        "two_concurrent_over_two_serial": (r.get("two_requests_concurrent", float("nan"))
                                           / r.get("two_requests_serial", 1)),
        "step_cache": {k: {"speedup": r["video_only_uncached"] / v["median_s"], "psnr_db": v["psnr_db"]}
                       for k, v in RESULTS.items() if k.startswith("video_only_step_cache_")},
    }
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "runtime_bench.json").write_text(json.dumps(summary, indent=2))
    for name, median in r.items():
        print(f"{name:40s} {median:8.3f} s")
    print(json.dumps({k: v for k, v in summary.items() if k not in ("medians_s", "spans_s")}, indent=2))
