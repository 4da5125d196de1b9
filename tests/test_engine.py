"""Engine.predict(): determinism, that every input really reaches the outputs, multi-image context."""
import numpy as np
import pytest
import torch

SETTINGS = dict(num_inference_steps=2, max_new_tokens=4)


def test_prediction_fields(engine, image):
    pred = engine.predict(image, "What happens next?", seed=3, **SETTINGS)
    cfg = engine.config
    g = cfg.generation
    assert pred.frames.dtype == np.uint8 and pred.frames.shape == (g.num_frames, g.height, g.width, 3)
    assert pred.world_latent.shape == (cfg.adapter.num_query_tokens, cfg.text.hidden_size)
    assert 1 <= len(pred.token_ids) <= 4 and isinstance(pred.text, str)
    assert set(pred.timings.to_dict()) == {"vision", "prefill", "adapter", "denoise", "vae", "text", "total"}
    assert all(v > 0 for v in pred.timings.to_dict().values())
    assert pred.settings["seed"] == 3 and pred.settings["num_inference_steps"] == 2


def test_same_seed_same_prediction_other_seed_other_video(engine, image):
    a = engine.predict(image, "What happens next?", seed=5, **SETTINGS)
    b = engine.predict(image, "What happens next?", seed=5, **SETTINGS)
    c = engine.predict(image, "What happens next?", seed=6, **SETTINGS)
    assert a.token_ids == b.token_ids and np.array_equal(a.frames, b.frames)
    assert torch.equal(a.world_latent, b.world_latent)
    assert not np.array_equal(a.frames, c.frames)
    assert a.token_ids == c.token_ids  # greedy text does not depend on the sampling seed


def test_prompt_and_image_reach_latent_and_video(engine, image, other_image):
    base = engine.predict(image, "What happens next?", seed=1, **SETTINGS)
    other_prompt = engine.predict(image, "Where does the red ball roll?", seed=1, **SETTINGS)
    other_img = engine.predict(other_image, "What happens next?", seed=1, **SETTINGS)
    for changed in (other_prompt, other_img):
        assert not torch.allclose(base.world_latent, changed.world_latent, atol=1e-6)
        assert not np.array_equal(base.frames, changed.frames)


def test_world_latent_alone_changes_video(engine, image):
    """With the image and noise fixed, the conditioning (query tokens -> adapter) steers the video."""
    request = engine.prepare(image, "What happens next?", **SETTINGS)
    with torch.inference_mode():
        prefill = engine.prefill(request, engine.vision(request))
        videos = []
        for latent in (prefill.world_latent, torch.zeros_like(prefill.world_latent)):
            cond, mask = engine.adapt(latent)
            gen = torch.Generator().manual_seed(0)
            latents = engine.denoise(request, cond, mask, gen)
            videos.append(latents)
    assert not torch.allclose(videos[0], videos[1])


def test_query_tokens_do_not_change_the_text(engine, image):
    """The queries read the prompt's cache but are not written into it: text = the plain VLM's."""
    request = engine.prepare(image, "What happens next?", **SETTINGS)
    with torch.inference_mode():
        prefill = engine.prefill(request, engine.vision(request))
        assert prefill.cache.length == request.input_ids.shape[1]  # the prompt only, not the query tokens
        before = engine.decode_text(prefill, 4)
        engine.model.backbone.query_tokens.mul_(3.0)
        try:
            prefill2 = engine.prefill(request, engine.vision(request))
            after = engine.decode_text(prefill2, 4)
        finally:
            engine.model.backbone.query_tokens.div_(3.0)
    assert before == after
    assert not torch.allclose(prefill.world_latent, prefill2.world_latent)


def test_multi_image_context_is_seen(engine, image, other_image):
    one = engine.predict([image], "What happens next?", seed=1, **SETTINGS)
    two = engine.predict([other_image, image], "What happens next?", seed=1, **SETTINGS)
    assert not torch.allclose(one.world_latent, two.world_latent, atol=1e-6)


def test_messages_and_prompt_agree(engine, image):
    by_prompt = engine.prepare(image, "What happens next?")
    by_messages = engine.prepare(image, messages=[{"role": "user", "content": "What happens next?"}])
    assert torch.equal(by_prompt.input_ids, by_messages.input_ids)


def test_predict_verifies_against_the_actual_clip(engine, image, tmp_path):
    from foresight_engine.errors import InvalidInputError
    from foresight_engine.verify import verify
    from foresight_engine.video_io import read_video, write_mp4
    pred = engine.predict(image, "What happens next?", seed=1, **SETTINGS)
    actual = np.clip(pred.frames.astype(int) + 12, 0, 255).astype(np.uint8)
    checked = engine.predict(image, "What happens next?", seed=1, actual=actual, **SETTINGS)
    direct = verify(pred.frames, actual)
    assert checked.verification.psnr == direct.psnr and checked.verification.ssim == direct.ssim
    assert np.isfinite(checked.verification.psnr) and checked.verification.alignment == "none"
    assert "verification" in checked.to_dict() and checked.timings.to_dict()["verify"] > 0
    write_mp4(pred.frames, tmp_path / "same.mp4", fps=24)  # a path works too (H.264 is lossy: not identical)
    from_path = engine.predict(image, "What happens next?", seed=1, actual=tmp_path / "same.mp4", **SETTINGS)
    assert from_path.verification.psnr == verify(pred.frames, read_video(tmp_path / "same.mp4")[0]).psnr
    with pytest.raises(InvalidInputError, match="actual"):
        engine.predict(image, "What happens next?", actual=np.zeros((2, 8, 8), np.uint8), **SETTINGS)
