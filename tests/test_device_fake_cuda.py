"""The device-resident stages on a fake CUDA device (no GPU needed): the contract a CUDA graph needs.

Under `FakeTensorMode(allow_non_fake_inputs=True)`, weights moved with `.to("cuda")` become fake CUDA tensors; any
CPU tensor mixed into their ops raises `FakeTensorDeviceMismatchError`, and any read of a value to the host
(`.item()`, `int(t)`, `.tolist()`, `.cpu()`) raises `DataDependentOutputException`. The adapter, the whole
denoising loop (every step, CFG on and off, with the static plan and with the plain forward), the VAE decode, the
prefill and one KV-cache decode step run here without either: they read only device tensors and never sync. The
video parts run for every decoder family (LTX-Video, HunyuanVideo-1.5: its plain forward is diffusers' own, which
reads a value back, so it is marked ungraphable and caught here); the hybrid encoder's DINOv2 stage and the
adapter fusing its features run here too.
Host metadata (the processor's output, `image_grid_thw`, lengths) stays real and outside these parts.
"""
import pytest
import torch
from PIL import Image
from torch._subclasses.fake_tensor import (DataDependentOutputException, FakeTensor, FakeTensorDeviceMismatchError,
                                           FakeTensorMode)

from foresight_engine.errors import DeviceUnavailable, GraphCaptureError
from foresight_engine.engine.graphs import GraphedDenoiser, check_capturable
from foresight_engine.models import denoising
from foresight_engine.models.glp import GLPModel
from foresight_engine.models.kv_cache import KVCache, decode_step
from foresight_engine.models.stages import AdapterStage, DecodeStage, PrefillStage, SpatialStage, VAEDecodeStage
from foresight_engine.models.video_geometry import VideoGeometry

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU: run `make gpu-check` instead")


@pytest.fixture(scope="module", params=["tiny", "tiny-hunyuan15"])
def fake(request):
    """A tiny model (one per decoder family) whose weights are fake CUDA tensors, the mode, and request geometry
    (host metadata)."""
    model = GLPModel.from_preset(request.param, 0)
    geometry = VideoGeometry.of(model.config, 64, 64, 9, 24)
    schedule = model.video_decoder.schedule(3, geometry.grid.num_tokens)  # host: diffusers' scheduler
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:  # outside inference_mode: under it, moving a small buffer makes a real CUDA call
        model.to("cuda")
        schedule = schedule.to("cuda")
    return model, mode, geometry, schedule


def _on_fake_cuda(*tensors):
    for t in tensors:
        assert isinstance(t, FakeTensor) and t.device.type == "cuda", (type(t), t.device)


def test_weights_moved_once_to_fake_cuda(fake):
    model, _, _, _ = fake
    assert model.device.type == "cuda"
    for module in model.components().values():
        _on_fake_cuda(*module.parameters(), *module.buffers())


def test_adapter(fake):
    model, mode, _, _ = fake
    c = model.config
    with mode, torch.inference_mode():
        conditioning, mask = AdapterStage(model.adapter)(torch.randn(1, c.adapter.num_query_tokens,
                                                                     c.text.hidden_size, device="cuda"))
    _on_fake_cuda(conditioning, mask)


def _loop(model, geometry, schedule, static: bool, guidance: float, step_cache=None):
    c = model.config
    velocity = model.video_decoder.velocity_model(static, step_cache)
    conditioning = torch.randn(1, c.adapter.num_tokens, c.decoder.conditioning_channels, device="cuda")
    mask = torch.ones(1, c.adapter.num_tokens, dtype=torch.long, device="cuda")
    g = geometry.grid
    image_latents = torch.randn(1, g.channels, 1, g.height, g.width, device="cuda")
    video = model.video_decoder.start(geometry, image_latents, torch.Generator().manual_seed(0))  # the family's
    state, loop = denoising.start(velocity, geometry, video, conditioning, mask, schedule, guidance)
    return velocity, state, loop


@pytest.mark.parametrize("static", [True, False], ids=["static-plan", "plain-forward"])
@pytest.mark.parametrize("guidance", [1.0, 3.0], ids=["no-cfg", "cfg"])
def test_whole_denoising_loop(fake, static, guidance):
    model, mode, geometry, schedule = fake
    steps = []
    with mode, torch.inference_mode():
        velocity, state, loop = _loop(model, geometry, schedule, static, guidance)
        if not velocity.graphable:  # HunyuanVideo-1.5's eager reference: diffusers reads `all(image_embeds == 0)`
            assert not static and model.config.decoder.family == "hunyuan15"
            with pytest.raises(DataDependentOutputException):
                denoising.denoise(velocity, state, loop)
            return
        latents = denoising.denoise(velocity, state, loop, lambda i, n: steps.append(i))
        # what a graph capture checks first: every tensor the loop reads is on the device
        check_capturable([*velocity.weights(), *(("state", t) for t in state.tensors()),
                          *(("loop", t) for t in loop.tensors())])
    assert steps == [1, 2, 3] and loop.batch == (2 if guidance > 1 else 1)
    _on_fake_cuda(latents, *state.tensors(), *loop.tensors())


def test_whole_step_program_reads_the_step_index_as_a_tensor(fake):
    """A compile artifact's `denoise` stage is `StaticStep` (the whole step, exported once for every step): run as the
    loop's program it indexes its tables with `loop.steps[i]`, a device tensor, so it reads nothing back."""
    from foresight_engine.models.static_velocity import StaticStep, StaticVelocity, step_program
    model, mode, geometry, schedule = fake
    c = model.config
    if c.decoder.family != "ltx":
        pytest.skip("only the LTX-Video family has a static whole-step form (`static_step_spec`)")
    transformer = model.video_decoder.transformer
    with mode, torch.inference_mode():
        velocity = StaticVelocity(transformer, ops=frozenset())
        conditioning = torch.randn(1, c.adapter.num_tokens, c.decoder.transformer.caption_channels, device="cuda")
        mask = torch.ones(1, c.adapter.num_tokens, dtype=torch.long, device="cuda")
        latents = torch.randn(1, geometry.grid.num_tokens, geometry.grid.token_channels, device="cuda")
        state, loop = denoising.start(velocity, geometry, denoising.VideoStart(latents), conditioning, mask, schedule,
                                      3.0)
        program = step_program(StaticStep(transformer, loop.batch, geometry.pinned, frozenset()))
        out = denoising.denoise(velocity, state, loop, program=program)
    _on_fake_cuda(out, loop.steps)


def test_graph_capture_gets_past_every_check_but_the_missing_gpu(fake):
    """On fake CUDA the capture refuses nothing but the absence of a real GPU (named)."""
    model, mode, geometry, schedule = fake
    with mode, torch.inference_mode():
        velocity, state, loop = _loop(model, geometry, schedule, True, 3.0)
        with pytest.raises(DeviceUnavailable, match="CUDA"):
            GraphedDenoiser().run(velocity, state, loop)


def test_vae_decode(fake):
    model, mode, geometry, _ = fake
    with mode, torch.inference_mode():
        video = VAEDecodeStage(model.vae)(torch.randn(geometry.latent_shape, device="cuda"))  # the family's VAE
        frames = (video[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0).mul(255).round().to(torch.uint8)
    _on_fake_cuda(video, frames)  # the engine's one host copy (`.cpu()`) comes after this
    assert tuple(frames.shape) == (9, 64, 64, 3)


def test_prefill_then_one_kv_cache_decode_step(fake):
    model, mode, _, _ = fake
    c = model.config
    with mode, torch.inference_mode():
        cache = KVCache.allocate(c, 64, torch.float32, "cuda")
        embeds = torch.randn(1, 10, c.text.hidden_size, device="cuda")
        positions = torch.arange(10, device="cuda").view(1, 1, 10).expand(3, 1, 10)
        logits, world_latent, keys, values = PrefillStage(model.backbone)(embeds, positions, *cache.filled())
        cache.append(keys, values)
        token = logits.argmax(-1, keepdim=True)  # [1, 1], on the device
        position = positions.amax(dim=(0, 2)) + 1
        slot = torch.full((), cache.length, dtype=torch.long, device="cuda")
        step_logits = decode_step(DecodeStage(model.backbone), cache, token, position, slot)
    _on_fake_cuda(logits, world_latent, step_logits, cache.keys, cache.values)
    assert cache.length == 10 and tuple(step_logits.shape) == (1, c.text.vocab_size)


def test_built_denoise_stage_is_device_resident(fake):
    """The family's one-step stage (what builders export and a graph may capture) on fake CUDA inputs."""
    from foresight_engine.models.export_spec import BuildShape, export_specs
    model, mode, geometry, _ = fake
    shape = BuildShape(geometry.height, geometry.width, geometry.num_frames)
    spec = export_specs(model.config)["denoise"]
    with mode:  # seeded host inputs, moved outside inference_mode (under it a small move makes a real CUDA call)
        inputs = [x.to("cuda") for x in spec.sample_inputs(shape)]
    with mode, torch.inference_mode():
        velocity = spec.wrap(model, shape)(*inputs)
    _on_fake_cuda(velocity)
    assert tuple(velocity.shape) == tuple(inputs[0].shape)


def test_hybrid_encoder_stages():
    """DINOv2 on the conditioning image and the adapter fusing its patch features with the world latent."""
    model = GLPModel.from_preset("tiny-hybrid", 0)
    c = model.config
    pixels = model.spatial_encoder.preprocess(Image.new("RGB", (96, 72)))  # host: the processor
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        model.to("cuda")
        pixels = pixels.to("cuda")
    with mode, torch.inference_mode():
        features = SpatialStage(model.spatial_encoder)(pixels)
        world = torch.randn(1, c.adapter.num_query_tokens, c.text.hidden_size, device="cuda")
        conditioning, mask = AdapterStage(model.adapter)(world, features)
    _on_fake_cuda(features, conditioning, mask)
    assert tuple(features.shape) == (1, c.spatial_encoder.num_patches, c.spatial_encoder.hidden_size)


# ---- the harness can fail: it catches a CPU tensor and a host read --------------------------------------------
def test_a_cpu_tensor_in_the_loop_is_caught(fake):
    model, mode, geometry, schedule = fake
    with mode, torch.inference_mode():
        velocity, state, loop = _loop(model, geometry, schedule, True, 1.0)
        device_latents = loop.latents
        loop.latents = torch.zeros(tuple(device_latents.shape))  # made on the host by mistake
        with pytest.raises(FakeTensorDeviceMismatchError):
            denoising.denoise(velocity, state, loop)
        # a 0-d CPU tensor passes as a scalar in eager code (and would be baked into a graph): the capture check
        # looks at every tensor the loop reads, so it refuses it
        loop.latents, loop.step_sizes = device_latents, torch.full((loop.num_steps,), -0.25)
        with pytest.raises(GraphCaptureError, match=r"loop\[1\] on cpu"):
            GraphedDenoiser().run(velocity, state, loop)


def test_the_step_cache_reads_the_host_and_is_caught(fake):
    """The first-block step cache compares a residual on the host every step: exactly what a graph cannot hold."""
    model, mode, geometry, schedule = fake
    with mode, torch.inference_mode():
        velocity, state, loop = _loop(model, geometry, schedule, True, 1.0, step_cache=0.1)
        assert not velocity.graphable
        with pytest.raises(DataDependentOutputException):
            denoising.denoise(velocity, state, loop)
