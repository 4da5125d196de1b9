"""The engine's eager path equals the libraries it is built from: transformers' greedy generate() for the text,
each decoder family's diffusers image-to-video pipeline (LTX-Video's, HunyuanVideo-1.5's; fed the adapter's output
as prompt embeddings) for the video."""
import numpy as np
import pytest
import torch

from foresight_engine import Engine
from foresight_engine.models.families import family


def _generate_reference(engine, request, max_new_tokens):
    qwen = engine.model.qwen
    enc = dict(input_ids=request.input_ids, attention_mask=torch.ones_like(request.input_ids),
               pixel_values=request.pixel_values, image_grid_thw=request.image_grid_thw,
               mm_token_type_ids=request.mm_token_type_ids)
    out = qwen.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, request.input_ids.shape[1]:].tolist()


@pytest.mark.parametrize("num_images", [1, 2])
def test_text_equals_transformers_generate(engine, image, other_image, num_images):
    images = [other_image, image][-num_images:]
    kwargs = dict(prompt="What happens next?", max_new_tokens=12, num_inference_steps=1)
    pred = engine.predict(images, **kwargs)
    request = engine.prepare(images, **kwargs)
    assert pred.token_ids == _generate_reference(engine, request, 12)
    assert len(pred.token_ids) >= 1


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
@pytest.mark.parametrize("preset", ["tiny", "tiny-hunyuan15"])
def test_video_equals_diffusers_image_to_video(engine_of, image, preset, guidance_scale):
    engine = engine_of(preset)
    settings = dict(num_frames=9, height=64, width=64, num_inference_steps=3, guidance_scale=guidance_scale, seed=7)
    eager = Engine(engine.model, static=False, overlap=False)  # the eager reference loops
    pred = eager.predict(image, "What happens next?", max_new_tokens=1, **settings)
    runtime = engine.predict(image, "What happens next?", max_new_tokens=1, **settings)  # static loop, overlap

    request = engine.prepare(image, "What happens next?", max_new_tokens=1, **settings)
    with torch.inference_mode():
        prefill = engine.prefill(request, engine.vision(request))
        cond, mask = engine.adapt(prefill.world_latent)
        pipe = family(engine.config).reference_pipeline(engine.model)
        ref = pipe(request.images[-1], cond, mask, generator=torch.Generator("cpu").manual_seed(7), frame_rate=24,
                   height=64, width=64, num_frames=9, num_inference_steps=3,
                   guidance_scale=guidance_scale)  # [F, H, W, 3] float in [0, 1]
    assert ref.shape == pred.frames.shape
    # uint8 quantisation is the only difference allowed: |diff| <= half a level, plus float noise
    for frames in (pred.frames, runtime.frames):
        assert np.abs(frames.astype(np.float64) / 255 - ref).max() <= 0.5 / 255 + 1e-5
    assert np.array_equal(pred.frames, (ref * 255).round().astype(np.uint8))
