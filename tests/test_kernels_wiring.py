"""Where the custom ops are wired: the static denoising loop's LTX blocks and the vision tower's window attention.
With the ops or without (`set_wiring("off")`), the same results within the precision's tolerance."""
import copy

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from foresight_engine import kernels
from foresight_engine.kernels import varlen
from foresight_engine.models import denoising
from foresight_engine.models.static_velocity import StaticVelocity


def _plan_inputs(engine, image, steps=2):
    request = engine.prepare(image, "What happens next?", num_inference_steps=steps)
    with torch.inference_mode():
        prefill = engine.prefill(request, engine.vision(request))
        cond, mask = engine.adapt(prefill.world_latent)
        video = engine.video_start(request, torch.Generator().manual_seed(0))
    schedule = engine.model.video_decoder.schedule(steps, request.geometry.grid.num_tokens)
    return request.geometry, video, cond, mask, schedule


def _run(transformer, inputs, guidance=1.0):
    geometry, video, cond, mask, schedule = inputs
    velocity = StaticVelocity(transformer)
    with torch.inference_mode():
        state, loop = denoising.start(velocity, geometry, video, cond, mask, schedule, guidance)
        return denoising.denoise(velocity, state, loop), state.ops


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_static_loop_with_and_without_the_kernels(engine, image, dtype, tol):
    transformer = engine.model.video_decoder.transformer
    transformer = transformer if dtype == torch.float32 else copy.deepcopy(transformer).to(dtype)
    inputs = _plan_inputs(engine, image)
    with kernels.set_wiring("all"):
        fused, ops = _run(transformer, inputs, guidance=3.0)  # CFG: two sequences in the varlen self-attention
    with kernels.set_wiring("off"):
        plain, none = _run(transformer, inputs, guidance=3.0)
    assert ops == frozenset(kernels.OPS) and none == frozenset()
    latents = inputs[1].latents
    assert not torch.equal(fused, latents)
    rel = (fused - plain).norm() / (plain - latents).norm()  # relative to what the loop moved
    assert rel < tol, rel


def test_vision_tower_window_attention_goes_through_the_op(engine, image, monkeypatch):
    calls = []
    op = varlen.varlen_attention
    monkeypatch.setattr(varlen, "varlen_attention", lambda *a: calls.append(a[3].tolist()) or op(*a))
    request = engine.prepare(image, "What happens next?")
    with torch.inference_mode():
        with kernels.set_wiring("all"):
            fused = engine.vision(request)
        assert calls and all(cu[0] == 0 for cu in calls)  # window layouts and whole images, as cu_seqlens
        with kernels.set_wiring("off"):
            n = len(calls)
            plain = engine.vision(request)
            assert len(calls) == n  # off: transformers' own per-window SDPA (the reference)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)


def test_wired_denoising_step_is_graph_safe_on_a_fake_cuda_device(engine, image):
    """With every op wired on CUDA, one step of the static loop has no host read and no CPU tensor inside."""
    geometry, video, cond, mask, schedule = _plan_inputs(engine, image)
    transformer = copy.deepcopy(engine.model.video_decoder.transformer)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, kernels.set_wiring("all"):
        transformer.to("cuda")
        cuda = lambda t: mode.from_tensor(t).to("cuda")  # noqa: E731
        schedule = type(schedule)(cuda(schedule.timesteps), cuda(schedule.sigmas))
        velocity = StaticVelocity(transformer)
        with torch.inference_mode():
            state, loop = denoising.start(velocity, geometry, denoising.VideoStart(cuda(video.latents)), cuda(cond),
                                          cuda(mask), schedule, 3.0)
            assert state.ops == frozenset(kernels.OPS)
            denoising.denoise_step(velocity, state, loop, 0)  # a host read would raise DataDependentOutputException
        assert loop.latents.device.type == "cuda"


def vision_layout(grid_thw: torch.Tensor, config) -> dict:
    """The vision tower's window layout, computed on the host (what an exported/graphed tower takes as inputs)."""
    from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index
    window_index, cu_windows = get_vision_window_index(grid_thw, spatial_merge_size=config.spatial_merge_size,
                                                       window_size=config.window_size, patch_size=config.patch_size)
    cu = get_vision_cu_seqlens(grid_thw)
    longest = lambda c: int((c[1:] - c[:-1]).max())  # noqa: E731
    return dict(position_ids=get_vision_position_ids(grid_thw, config.spatial_merge_size), window_index=window_index,
                cu_window_seqlens=cu_windows, cu_seqlens=cu, max_seqlen=longest(cu),
                max_window_seqlen=longest(cu_windows))


def test_vision_tower_with_a_host_computed_layout_is_graph_safe_on_fake_cuda(engine, image):
    """With the layout as tensors and varlen_attention inside, the vision tower reads nothing back and mixes no
    device: what exporting it (TensorRT) and graphing it need."""
    request = engine.prepare(image, "What happens next?")
    visual = engine.model.vision_tower.visual
    layout = vision_layout(request.image_grid_thw, visual.config)
    with torch.inference_mode():
        want = visual(request.pixel_values, grid_thw=request.image_grid_thw).pooler_output
        torch.testing.assert_close(visual(request.pixel_values, grid_thw=request.image_grid_thw, **layout)
                                   .pooler_output, want, rtol=1e-5, atol=1e-5)
    tower = copy.deepcopy(visual)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, kernels.set_wiring("all"):
        tower.to("cuda")
        cuda = lambda t: mode.from_tensor(t).to("cuda") if isinstance(t, torch.Tensor) else t  # noqa: E731
        with torch.inference_mode():
            out = tower(cuda(request.pixel_values), grid_thw=cuda(request.image_grid_thw),
                        **{k: cuda(v) for k, v in layout.items()}).pooler_output
    assert out.shape == want.shape and out.device.type == "cuda"
