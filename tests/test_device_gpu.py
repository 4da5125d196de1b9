"""GPU acceptance checks (`pytest -m gpu`, the `make gpu-check` suite): what the fake-CUDA tests cannot prove —
real kernels on the device, graph replay numerics, one capture per shape, the branch streams. Skipped without a
CUDA GPU: never run on this project's CPU machines (written against the CPU-proven contract)."""
import numpy as np
import pytest
import torch

from foresight_engine import Engine

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
SETTINGS = dict(num_inference_steps=3, max_new_tokens=6, seed=4)


@pytest.fixture(scope="module")
def gpu_engine():
    return Engine.from_preset("tiny", seed=0, device="cuda")


def test_weights_and_results_live_on_the_gpu(gpu_engine, engine, image):
    assert all(p.is_cuda for m in gpu_engine.model.components().values() for p in m.parameters())
    got = gpu_engine.predict(image, "What happens next?", **SETTINGS)
    want = engine.predict(image, "What happens next?", **SETTINGS)  # the CPU engine, same seed
    assert got.world_latent.is_cuda and got.video_latent.is_cuda and isinstance(got.frames, np.ndarray)
    torch.testing.assert_close(got.world_latent.cpu(), want.world_latent, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(got.video_latent.cpu(), want.video_latent, rtol=1e-2, atol=1e-2)  # RNG parity


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_graphed_loop_replays_the_eager_loop_and_captures_once(gpu_engine, image, guidance):
    graphed = Engine(gpu_engine.model, device="cuda", cuda_graphs=True)
    for seed in (1, 2):  # the second request replays the first one's graph with its own inputs
        kwargs = dict(SETTINGS, seed=seed, guidance_scale=guidance)
        got = graphed.predict(image, "What happens next?", **kwargs)
        want = gpu_engine.predict(image, "What happens next?", **kwargs)
        torch.testing.assert_close(got.video_latent, want.video_latent, rtol=1e-5, atol=1e-5)
    assert len(graphed._graphs._graphs) == 1


def test_branches_run_on_their_own_streams(gpu_engine, image):
    streams = gpu_engine.streams._streams
    assert len({s.cuda_stream for s in streams.values()} | {torch.cuda.current_stream().cuda_stream}) == 4
    pred = gpu_engine.predict(image, "What happens next?", **dict(SETTINGS, max_new_tokens=16))
    assert pred.timings.overlap_fraction() > 0.5  # text decoded while the video branch ran
