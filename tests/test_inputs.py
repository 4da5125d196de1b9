"""Bad input gets a typed error naming the value, before any model runs."""
import io

import numpy as np
import pytest
from PIL import Image

from foresight_engine.errors import ImageError, InvalidInputError, PromptError, UnknownPresetError
from foresight_engine import Engine


@pytest.mark.parametrize("kwargs, match", [
    (dict(height=66), "height=66 must be a positive multiple of 4"),
    (dict(width=0), "width=0"),
    (dict(num_frames=8), "num_frames=8"),
    (dict(num_frames=0), "num_frames=0"),
    (dict(num_inference_steps=-1), "num_inference_steps=-1"),
    (dict(num_inference_steps=0), "num_inference_steps=0"),
    (dict(guidance_scale=float("nan")), "guidance_scale=nan"),
    (dict(max_new_tokens=-2), "max_new_tokens=-2"),
    (dict(seed=-1), "seed=-1"),
    (dict(height=64.0), "height"),
])
def test_bad_settings(no_models, image, kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        no_models.predict(image, "What happens next?", **kwargs)


def test_zero_and_too_many_images(no_models, image):
    with pytest.raises(ImageError, match="no image"):
        no_models.predict([], "What happens next?")
    n = no_models.config.processor.max_images + 1
    with pytest.raises(ImageError, match=f"{n} images"):
        no_models.predict([image] * n, "What happens next?")


def test_unreadable_truncated_and_empty_images(no_models, tmp_path, image):
    missing = tmp_path / "missing.png"
    with pytest.raises(ImageError, match="missing.png"):
        no_models.predict(missing, "What happens next?")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match=r"image\[0\]"):
        no_models.predict(garbage, "What happens next?")
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match=r"image\[1\]"):
        no_models.predict([image, truncated], "What happens next?")
    with pytest.raises(ImageError, match="0x0|shape"):
        no_models.predict(np.zeros((0, 0, 3), np.uint8), "What happens next?")
    with pytest.raises(ImageError, match="dtype float64"):
        no_models.predict(np.zeros((8, 8, 3)), "What happens next?")


def test_rgba_and_grayscale_are_converted(engine, image):
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    gray = image[..., 0]
    for img in (rgba, gray, Image.fromarray(gray).convert("L")):
        request = engine.prepare(img, "What happens next?")
        assert request.images[0].mode == "RGB"


def test_prompts(no_models, image):
    for prompt in ("", "   "):
        with pytest.raises(PromptError, match="non-empty"):
            no_models.predict(image, prompt)
    too_long = "the ball rolls " * 400
    with pytest.raises(PromptError, match="tokens"):
        no_models.predict(image, too_long)
    with pytest.raises(PromptError, match="exactly one"):
        no_models.predict(image)
    with pytest.raises(PromptError, match="2 image placeholder"):
        no_models.predict(image, messages=[{"role": "user", "content": [
            {"type": "image"}, {"type": "image"}, {"type": "text", "text": "hi"}]}])
    with pytest.raises(PromptError, match="role"):
        no_models.predict(image, messages=[{"role": "robot", "content": "hi"}])


def test_unknown_preset():
    with pytest.raises(UnknownPresetError, match="'huge'"):
        Engine.from_preset("huge")
