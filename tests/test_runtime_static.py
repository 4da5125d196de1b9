"""The static denoising loop and the static KV decode equal the eager reference loops (fp32)."""
import pytest
import torch

from foresight_engine.models.static_denoiser import GraphedDenoiseLoop, StaticDenoiser
from foresight_engine.models.static_kv import StaticDecoder


def _denoise_inputs(engine, image, guidance_scale, steps=3):
    request = engine.prepare(image, "What happens next?", guidance_scale=guidance_scale, num_inference_steps=steps)
    with torch.inference_mode():
        prefill = engine.prefill(request, engine.vision(request))
        cond, mask = engine.adapt(prefill.world_latent)
        grid = engine.latent_grid(request.settings)
        latents, first_frame = engine.initial_latents(request, grid, torch.Generator().manual_seed(0))
    decoder = engine.model.video_decoder
    schedule = decoder.schedule(steps, grid.num_tokens)
    return decoder, dict(latents=latents, first_frame=first_frame, cond=cond, mask=mask, schedule=schedule,
                         grid=grid, rope=engine.rope_scale(request.settings), guidance=guidance_scale)


def _reference(decoder, x):
    with torch.inference_mode():
        return decoder.denoise(x["latents"], x["first_frame"], x["cond"], x["mask"], x["schedule"], x["grid"],
                               x["rope"], x["guidance"])


def _static(decoder, x, **run_kwargs):
    denoiser = StaticDenoiser(decoder)
    plan = denoiser.plan(x["latents"], x["cond"], x["mask"], x["schedule"], x["grid"], x["rope"], x["guidance"])
    return denoiser.run(plan, **run_kwargs), plan


@pytest.mark.parametrize("guidance_scale,steps", [(1.0, 3), (3.0, 3), (1.0, 1)])
def test_static_loop_equals_reference_loop(engine, image, guidance_scale, steps):
    decoder, x = _denoise_inputs(engine, image, guidance_scale, steps)
    ref = _reference(decoder, x)
    ours, plan = _static(decoder, x)
    assert plan.batch == (2 if guidance_scale > 1 else 1)  # CFG is one batched pass, skipped at 1
    assert not torch.equal(ref, x["latents"])  # the loop really moved the latents
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    pinned = x["grid"].tokens_per_frame
    assert torch.equal(ours[:, :pinned], x["latents"][:, :pinned])  # the conditioned frame is never updated


def test_static_loop_reports_every_step_and_stops_when_the_hook_raises(engine, image):
    decoder, x = _denoise_inputs(engine, image, 1.0, 3)
    seen = []
    _static(decoder, x, on_step=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]

    def stop(i, n):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _static(decoder, x, on_step=stop)


def test_step_cache_off_or_never_hit_equals_reference(engine, image):
    decoder, x = _denoise_inputs(engine, image, 1.0, 4)
    ref = _reference(decoder, x)
    ours, plan = _static(decoder, x, step_cache_threshold=1e-12)  # a threshold no step meets
    assert plan.cache_stats.computed == 4 and plan.cache_stats.skipped == 0
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_step_cache_skips_blocks_when_the_first_block_barely_changes(engine, image):
    decoder, x = _denoise_inputs(engine, image, 1.0, 4)
    ref = _reference(decoder, x)
    ours, plan = _static(decoder, x, step_cache_threshold=10.0)  # every step after the first reuses
    assert plan.cache_stats.computed == 1 and plan.cache_stats.skipped == 3
    assert torch.isfinite(ours).all() and not torch.allclose(ours, ref, atol=1e-5)


def test_cuda_graph_loop_needs_cuda(engine):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the graph path is exercised on the GPU")
    with pytest.raises(RuntimeError, match="CUDA"):
        GraphedDenoiseLoop(StaticDenoiser(engine.model.video_decoder))


def test_static_kv_decode_equals_dynamic_cache_decode(engine, image):
    request = engine.prepare(image, "What happens next?")
    backbone = engine.model.backbone
    with torch.inference_mode():
        ref_prefill = engine.prefill(request, engine.vision(request))
        prefill = engine.prefill(request, engine.vision(request))
        decoder = StaticDecoder(backbone.language_model, backbone.lm_head)
        cache = decoder.new_cache(prefill.cache.get_seq_length() + 8)
        cache.load(prefill.cache)
        position = prefill.next_position
        for token in (5, 77, 301, 12, 9):  # arbitrary tokens: logits must agree at every step
            ids = torch.tensor([[token]])
            ref = backbone.decode_step(ids, position, ref_prefill.cache)
            ours = decoder(ids, position, torch.tensor(cache.length), cache)
            cache.length += 1
            position = position + 1
            torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        # the static buffers hold what the dynamic cache holds
        n = ref_prefill.cache.get_seq_length()
        assert cache.length == n
        torch.testing.assert_close(cache.keys[0, :, :, :n], ref_prefill.cache.layers[0].keys, rtol=1e-5, atol=1e-5)
