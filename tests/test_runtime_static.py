"""The one denoising loop with the static plan equals it with the plain transformer forward (the eager reference),
for every decoder family; the one KV cache's decode equals transformers' own DynamicCache decode (fp32)."""
import pytest
import torch
from transformers import DynamicCache

from foresight_engine.models import denoising
from foresight_engine.models.kv_cache import decode_step
from foresight_engine.models.stages import DecodeStage


def _denoise_inputs(engine, image, guidance_scale, steps=3):
    request = engine.prepare(image, "What happens next?", guidance_scale=guidance_scale, num_inference_steps=steps)
    with torch.inference_mode():
        prefill = engine.prefill(request, engine.vision(request))
        cond, mask = engine.adapt(prefill.world_latent)
        video = engine.video_start(request, torch.Generator().manual_seed(0))
    schedule = engine.model.video_decoder.schedule(steps, request.geometry.grid.num_tokens)
    return dict(geometry=request.geometry, video=video, latents=video.latents, cond=cond, mask=mask,
                schedule=schedule, guidance=guidance_scale)


def _run(engine, x, static=True, step_cache=None, on_step=None):
    model = engine.model.video_decoder.velocity_model(static, step_cache)
    with torch.inference_mode():
        state, loop = denoising.start(model, x["geometry"], x["video"], x["cond"], x["mask"], x["schedule"],
                                      x["guidance"])
        return denoising.denoise(model, state, loop, on_step), state, loop


def test_whole_step_module_equals_the_loop_step(engine, image):
    """`StaticStep` (what a compile artifact exports as `denoise`: one module for every step, the index a tensor) run
    as the loop's program equals the shared loop's own step, fp32."""
    from foresight_engine import kernels
    from foresight_engine.models.static_velocity import StaticStep, StaticVelocity, step_program
    x = _denoise_inputs(engine, image, 3.0)
    g, transformer = x["geometry"], engine.model.video_decoder.transformer
    ref, _, _ = _run(engine, x)
    ops = frozenset(kernels.wired_ops("cpu"))
    velocity = StaticVelocity(transformer, ops=ops)
    with torch.inference_mode():
        state, loop = denoising.start(velocity, g, x["video"], x["cond"], x["mask"], x["schedule"], 3.0)
        program = step_program(StaticStep(transformer, loop.batch, g.pinned, ops))
        ours = denoising.denoise(velocity, state, loop, program=program)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert not torch.equal(ours, x["latents"])


@pytest.mark.parametrize("guidance_scale,steps", [(1.0, 3), (3.0, 3), (1.0, 1)])
@pytest.mark.parametrize("preset", ["tiny", "tiny-hunyuan15"])
def test_static_velocity_equals_the_plain_forward(engine_of, image, preset, guidance_scale, steps):
    engine = engine_of(preset)
    x = _denoise_inputs(engine, image, guidance_scale, steps)
    ref, _, _ = _run(engine, x, static=False)
    ours, _, loop = _run(engine, x)
    assert loop.batch == (2 if guidance_scale > 1 else 1)  # CFG is one batched pass, skipped at 1
    assert not torch.equal(ref, x["latents"])  # the loop really moved the latents
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    pinned = x["geometry"].pinned  # LTX-Video: the conditioned first frame; HunyuanVideo-1.5: none
    assert pinned == (x["geometry"].grid.tokens_per_frame if preset == "tiny" else 0)
    assert torch.equal(ours[:, :pinned], x["latents"][:, :pinned])  # pinned tokens are never updated


def test_loop_reports_every_step_and_stops_when_the_hook_raises(engine, image):
    x = _denoise_inputs(engine, image, 1.0, 3)
    seen = []
    _run(engine, x, on_step=lambda i, n: seen.append((i, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]

    def stop(i, n):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _run(engine, x, on_step=stop)


@pytest.mark.parametrize("preset", ["tiny", "tiny-hunyuan15"])
def test_step_cache_off_or_never_hit_equals_reference(engine_of, image, preset):
    engine = engine_of(preset)
    x = _denoise_inputs(engine, image, 1.0, 4)
    ref, _, _ = _run(engine, x, static=False)
    ours, plan, _ = _run(engine, x, step_cache=1e-12)  # a threshold no step meets
    assert plan.cache_stats.computed == 4 and plan.cache_stats.skipped == 0
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", ["tiny", "tiny-hunyuan15"])
def test_step_cache_skips_blocks_when_the_first_block_barely_changes(engine_of, image, preset):
    engine = engine_of(preset)
    x = _denoise_inputs(engine, image, 1.0, 4)
    ref, _, _ = _run(engine, x, static=False)
    ours, plan, _ = _run(engine, x, step_cache=10.0)  # every step after the first reuses
    assert plan.cache_stats.computed == 1 and plan.cache_stats.skipped == 3
    assert torch.isfinite(ours).all() and not torch.allclose(ours, ref, atol=1e-5)


def test_kv_cache_decode_equals_transformers_dynamic_cache(engine, image):
    """Prefill and every decode step on the one KV cache give transformers' logits (its own forward on a
    DynamicCache), and the cache holds the same keys."""
    request = engine.prepare(image, "What happens next?")
    backbone = engine.model.backbone
    lm = backbone.language_model
    with torch.inference_mode():
        prefill = engine.prefill(request, engine.vision(request))
        positions, _ = engine.model.qwen.model.get_rope_index(
            request.input_ids, mm_token_type_ids=request.mm_token_type_ids, image_grid_thw=request.image_grid_thw)
        embeds = backbone.embed(request.input_ids, engine.vision(request))
        reference = DynamicCache(config=lm.config)
        hidden = lm(inputs_embeds=embeds, position_ids=positions, past_key_values=reference, use_cache=True)
        torch.testing.assert_close(prefill.logits, backbone.lm_head(hidden.last_hidden_state[:, -1]),
                                   rtol=1e-5, atol=1e-5)
        cache, position = prefill.cache, prefill.next_position.clone()
        slot = torch.tensor(cache.length)
        for token in (5, 77, 301, 12, 9):  # arbitrary tokens: logits must agree at every step
            ids = torch.tensor([[token]])
            out = lm(inputs_embeds=lm.embed_tokens(ids), position_ids=position.view(1, 1, 1).expand(3, 1, 1),
                     past_key_values=reference, use_cache=True)
            ours = decode_step(DecodeStage(backbone), cache, ids, position, slot)
            cache.length += 1
            slot += 1
            position += 1
            torch.testing.assert_close(ours, backbone.lm_head(out.last_hidden_state[:, -1]), rtol=1e-5, atol=1e-5)
        n = reference.get_seq_length()
        assert cache.length == n
        torch.testing.assert_close(cache.keys[0, :, :, :n], reference.layers[0].keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(cache.values[-1, :, :, :n], reference.layers[-1].values, rtol=1e-5, atol=1e-5)


def test_decode_stage_compiles_once_with_fixed_shapes(engine, image):
    """One fullgraph compile serves every decode step (the slot is a tensor, the buffers never change shape)."""
    import torch._dynamo
    request = engine.prepare(image, "What happens next?")
    stage = DecodeStage(engine.model.backbone)
    compiled = torch.compile(stage, fullgraph=True, dynamic=False)
    with torch.inference_mode():
        eager, ours = (engine.prefill(request, engine.vision(request)) for _ in range(2))
        position, slot = eager.next_position.clone(), torch.tensor(eager.cache.length)
        for step, token in enumerate((5, 77, 301)):
            ids = torch.tensor([[token]])
            with torch._dynamo.config.patch(error_on_recompile=step > 0):
                got = decode_step(compiled, ours.cache, ids, position, slot)
            ref = decode_step(stage, eager.cache, ids, position, slot)
            slot += 1
            position += 1
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_kv_caches_are_allocated_once_and_a_request_that_cannot_fit_is_refused_first(engine, image, monkeypatch):
    from foresight_engine import Engine
    from foresight_engine.errors import ConfigError, PromptError
    from foresight_engine.models.kv_cache import KVCache
    rt = Engine(engine.model, max_queue_size=2)
    allocated = []
    original = KVCache.allocate.__func__
    monkeypatch.setattr(KVCache, "allocate", classmethod(lambda cls, *a, **k: allocated.append(a[1])
                                                         or original(cls, *a, **k)))
    for seed in (1, 2, 3):
        rt.predict(image, "What happens next?", seed=seed, num_inference_steps=1, max_new_tokens=3)
    assert allocated == [rt.max_seq_len]  # one cache, reused by every request that followed
    config = engine.config
    assert rt.max_seq_len == min(config.text.max_position_embeddings,
                                 config.processor.max_prompt_tokens + config.generation.limits.max_new_tokens)

    tight = Engine(engine.model, max_seq_len=32)
    monkeypatch.setattr(tight, "vision", lambda *a: pytest.fail("a model ran"))
    with pytest.raises(PromptError, match=r"KV cache of 32 slots \(Engine\(max_seq_len"):
        tight.predict(image, "What happens next?")
    with pytest.raises(ConfigError, match="max_seq_len=1 "):
        Engine(engine.model, max_seq_len=1)


def test_decode_span_is_a_fixed_power_of_two_and_equals_the_whole_buffer(engine, image):
    from foresight_engine.models.kv_cache import attention_span
    assert [attention_span(n, 4096) for n in (1, 256, 257, 700, 5000)] == [256, 256, 512, 1024, 4096]
    request = engine.prepare(image, "What happens next?")
    stage = DecodeStage(engine.model.backbone)
    with torch.inference_mode():
        whole, spanned = (engine.prefill(request, engine.vision(request)) for _ in range(2))
        span = engine.decode_span(spanned.cache.length + 8)
        assert span == 256 < engine.max_seq_len
        position, slot = whole.next_position.clone(), torch.tensor(whole.cache.length)
        for token in (5, 77, 301):
            ids = torch.tensor([[token]])
            torch.testing.assert_close(decode_step(stage, spanned.cache, ids, position, slot, span),
                                       decode_step(stage, whole.cache, ids, position, slot), rtol=1e-5, atol=1e-5)
            slot += 1
            position += 1
