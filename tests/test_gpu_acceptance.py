"""The GPU acceptance suite (`make gpu-check`, `pytest -m gpu`): what only a GPU can prove about the TensorRT and
Torch-TensorRT backends. Never run on this project's CPU machines (skipped without CUDA, deselected from `make
test`); everything these builds consume is checked on the CPU by tests/test_gpu_backends_cpu.py.

For tiny and small: build with `tensorrt` (fp16, bf16, fp8) and `torch-tensorrt` (bf16) on the GPU, the accuracy
gate on (the build validates every plan on the GPU against eager on the GPU), load with device="cuda", check the
tokens and frames against the eager engine on the GPU at the precision's thresholds, capture and replay the
denoising loop of plan calls as one CUDA graph, and overlap the text with the video on two streams. Every test
appends a record to the report `make gpu-check` writes ($FORESIGHT_GPU_REPORT, JSON lines).
"""
import json
import os
import time

import numpy as np
import pytest
import torch

from foresight_engine import Engine
from foresight_engine.builders.accuracy import AccuracyThresholds, psnr, token_agreement
from foresight_engine.builders.build import build
from foresight_engine.models.export_spec import BuildShape
from foresight_engine.models.glp import GLPModel

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BUILDS = [("tensorrt", "fp16"), ("tensorrt", "bf16"), ("tensorrt", "fp8"), ("torch-tensorrt", "bf16")]
PRESETS = ("tiny", "small")
PROMPT = "What happens next? Describe the motion."
IMAGE_SIZE = (72, 96)  # the test image: the vision stage is built for its patch grid


def record(**fields) -> None:
    """One line of the gpu-check report (a no-op outside `make gpu-check`)."""
    path = os.environ.get("FORESIGHT_GPU_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(fields, default=str) + "\n")


def thresholds(preset: str, precision: str) -> AccuracyThresholds:
    """The precision's gate; tiny's random-weight text model has near-tied logits, so its token agreement is not
    held to the trained-model limit (its frames and stage errors are)."""
    base = AccuracyThresholds.for_precision("fp8" if precision == "fp8" else precision)
    if preset != "tiny":
        return base
    return AccuracyThresholds(base.max_relative_l2, base.min_cosine, base.min_frame_psnr, min_token_agreement=0.5)


@pytest.fixture(scope="module", params=PRESETS)
def preset(request):
    return request.param


@pytest.fixture(scope="module")
def reference(preset) -> GLPModel:
    return GLPModel.from_preset(preset, 0)


@pytest.fixture(scope="module")
def eager_gpu(reference) -> Engine:
    import copy
    return Engine(copy.deepcopy(reference), device="cuda")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(*IMAGE_SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def artifacts(preset, reference, tmp_path_factory):
    """Every (backend, precision) build of the preset, gate on, on the GPU: {(backend, precision): BuildResult}."""
    shape = BuildShape.for_config(reference.config, image_size=IMAGE_SIZE)
    out, built = tmp_path_factory.mktemp(f"gpu-{preset}"), {}
    for backend, precision in BUILDS:
        start = time.perf_counter()
        result = build(reference, out / f"{backend}-{precision}", backend=backend, precision=precision, shape=shape,
                       device="cuda", thresholds=thresholds(preset, precision))
        built[(backend, precision)] = result
        record(test="build", preset=preset, backend=backend, precision=precision, passed=True,
               seconds=round(time.perf_counter() - start, 1), accuracy=result.accuracy.to_dict())
    return built


@pytest.mark.parametrize(("backend", "precision"), BUILDS, ids=[f"{b}-{p}" for b, p in BUILDS])
def test_loaded_on_the_gpu_matches_eager_on_the_gpu(preset, artifacts, eager_gpu, image, backend, precision):
    result = artifacts[(backend, precision)]
    manifest = result.manifest
    for name, entry in manifest.stages.items():  # every stage built, validated on the GPU at build time
        assert entry.backend == backend and entry.engine, name
        assert entry.device_vs_eager, name
    engine = Engine.load(result.directory, device="cuda")
    assert set(engine.built.functions) == set(manifest.stages)
    settings = dict(num_inference_steps=3, max_new_tokens=8, seed=4)
    got, want = engine.predict(image, PROMPT, **settings), eager_gpu.predict(image, PROMPT, **settings)
    assert got.world_latent.is_cuda and got.video_latent.is_cuda
    limits = thresholds(preset, precision)
    frame_psnr, agreement = psnr(got.frames, want.frames), token_agreement(got.token_ids, want.token_ids)
    record(test="load_and_predict", preset=preset, backend=backend, precision=precision, frame_psnr=frame_psnr,
           token_agreement=agreement, device_vs_eager={n: e.device_vs_eager for n, e in manifest.stages.items()},
           passed=frame_psnr >= limits.min_frame_psnr and agreement >= limits.min_token_agreement)
    assert frame_psnr >= limits.min_frame_psnr and agreement >= limits.min_token_agreement


@pytest.mark.parametrize(("backend", "precision"), [("tensorrt", "bf16"), ("tensorrt", "fp8"),
                                                    ("torch-tensorrt", "bf16")])
def test_denoising_loop_of_built_steps_is_captured_once_and_replays(preset, artifacts, image, backend, precision):
    """The whole loop of plan calls as ONE CUDA graph: the replay equals the uncaptured loop, request after
    request, with one capture per shape."""
    directory = artifacts[(backend, precision)].directory
    plain, graphed = Engine.load(directory, device="cuda"), Engine.load(directory, device="cuda", cuda_graphs=True)
    worst = 0.0
    for seed in (1, 2):
        settings = dict(num_inference_steps=4, max_new_tokens=4, seed=seed)
        got, want = graphed.predict(image, PROMPT, **settings), plain.predict(image, PROMPT, **settings)
        worst = max(worst, float((got.video_latent - want.video_latent).abs().max()))
    captures = len(graphed._graphs._graphs)
    record(test="cuda_graph", preset=preset, backend=backend, precision=precision, max_abs_diff=worst,
           captures=captures, passed=worst <= 1e-3 and captures == 1)
    assert worst <= 1e-3 and captures == 1


def test_text_overlaps_the_video_on_two_streams(preset, artifacts, image):
    engine = Engine.load(artifacts[("tensorrt", "fp8")].directory, device="cuda", cuda_graphs=True)
    engine.predict(image, PROMPT, num_inference_steps=4, max_new_tokens=4)  # warm-up: capture
    prediction = engine.predict(image, PROMPT, num_inference_steps=8, max_new_tokens=32)
    overlap = prediction.timings.overlap_fraction()
    record(test="two_streams", preset=preset, overlap_fraction=overlap, timings=prediction.timings.to_dict(),
           passed=overlap > 0.5)
    assert overlap > 0.5


def test_tensorrt_stage_buffers_are_allocated_once(preset, artifacts, image):
    """The runner's buffers never move: the same addresses after requests of different prompt lengths."""
    engine = Engine.load(artifacts[("tensorrt", "bf16")].directory, device="cuda")
    prefill = engine.built.functions["prefill"]
    before = {name: buffer.data_ptr() for name, buffer in prefill.buffers.items()}
    engine.predict(image, "Go.", num_inference_steps=2, max_new_tokens=2)
    engine.predict(image, PROMPT + " Then describe the colours, the light and every moving thing.",
                   num_inference_steps=2, max_new_tokens=2)
    after = {name: buffer.data_ptr() for name, buffer in prefill.buffers.items()}
    record(test="buffers_allocated_once", preset=preset, passed=before == after)
    assert before == after
