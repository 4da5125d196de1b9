"""Request checking: every argument of `predict()` is validated here, before any model runs.

Each check raises a typed error (`foresight_engine.errors`) that names the bad value.
"""
from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import ModelConfig
from ..errors import ImageError, InvalidInputError, PromptError

ImageInput = Image.Image | np.ndarray | str | Path | bytes


@dataclass(frozen=True)
class Settings:
    """The resolved per-request settings (request arguments over the preset's defaults)."""

    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    max_new_tokens: int
    seed: int
    frame_rate: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_settings(config: ModelConfig, *, height=None, width=None, num_frames=None, num_inference_steps=None,
                     guidance_scale=None, max_new_tokens=None, seed=0, frame_rate=None) -> Settings:
    gen = config.generation
    s = Settings(
        height=gen.height if height is None else height,
        width=gen.width if width is None else width,
        num_frames=gen.num_frames if num_frames is None else num_frames,
        num_inference_steps=gen.num_inference_steps if num_inference_steps is None else num_inference_steps,
        guidance_scale=gen.guidance_scale if guidance_scale is None else guidance_scale,
        max_new_tokens=gen.max_new_tokens if max_new_tokens is None else max_new_tokens,
        seed=seed, frame_rate=gen.frame_rate if frame_rate is None else frame_rate,
    )
    for name in ("height", "width", "num_frames", "num_inference_steps", "max_new_tokens", "seed", "frame_rate"):
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InvalidInputError(f"{name} must be an integer, got {value!r}")
    step = config.spatial_step
    for name in ("height", "width"):
        value = getattr(s, name)
        if value <= 0 or value % step:
            raise InvalidInputError(f"{name}={value} must be a positive multiple of {step} "
                                    f"(the decoder's spatial step for preset {config.name!r})")
    r = config.temporal_step
    if s.num_frames < 1 or (s.num_frames - 1) % r:
        raise InvalidInputError(f"num_frames={s.num_frames} must be of the form {r}*k+1 (e.g. {r + 1} or {2 * r + 1})")
    if not 1 <= s.num_inference_steps <= gen.max_inference_steps:
        raise InvalidInputError(f"num_inference_steps={s.num_inference_steps} must be in [1, {gen.max_inference_steps}]")
    if not 0 <= s.max_new_tokens <= gen.max_new_tokens_limit:
        raise InvalidInputError(f"max_new_tokens={s.max_new_tokens} must be in [0, {gen.max_new_tokens_limit}]")
    if not (isinstance(s.guidance_scale, (int, float)) and math.isfinite(s.guidance_scale) and s.guidance_scale >= 1):
        raise InvalidInputError(f"guidance_scale={s.guidance_scale!r} must be a finite number >= 1 (1 disables CFG)")
    if s.seed < 0:
        raise InvalidInputError(f"seed={s.seed} must be >= 0")
    if s.frame_rate <= 0:
        raise InvalidInputError(f"frame_rate={s.frame_rate} must be > 0")
    return s


def load_image(image: ImageInput, index: int = 0) -> Image.Image:
    """Decode one image fully (truncated files fail here, not in the model) and convert it to RGB."""
    where = f"image[{index}]"
    try:
        if isinstance(image, Image.Image):
            img = image
        elif isinstance(image, np.ndarray):
            if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
                raise ImageError(f"{where}: array of shape {image.shape} is not [H, W], [H, W, 1|3|4]")
            if image.dtype != np.uint8:
                raise ImageError(f"{where}: array dtype {image.dtype} must be uint8")
            img = Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[2] == 1 else image)
        elif isinstance(image, (bytes, bytearray)):
            img = Image.open(io.BytesIO(image))
        elif isinstance(image, (str, Path)):
            path = Path(image)
            if not path.is_file():
                raise ImageError(f"{where}: no such file {str(path)!r}")
            img = Image.open(path)
        else:
            raise ImageError(f"{where}: unsupported type {type(image).__name__}")
        img.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{where}: cannot decode image ({exc})") from exc
    if img.width == 0 or img.height == 0:
        raise ImageError(f"{where}: image is {img.width}x{img.height}")
    return img.convert("RGB") if img.mode != "RGB" else img


def load_images(images: ImageInput | Sequence[ImageInput], max_images: int) -> list[Image.Image]:
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ImageError("no image given: at least one image is required (the last one conditions the video)")
    if len(items) > max_images:
        raise ImageError(f"{len(items)} images given; at most {max_images} are allowed")
    return [load_image(item, i) for i, item in enumerate(items)]


def build_messages(prompt: str | None, messages: list[dict] | None, num_images: int) -> list[dict]:
    """A chat (list of {role, content}) whose image placeholders match `num_images`.

    A plain `prompt` becomes one user turn with every image first. Given `messages` without image entries,
    the images are placed at the start of the first user turn; with image entries, their count must match."""
    if (prompt is None) == (messages is None):
        raise PromptError("give exactly one of prompt= or messages=")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError(f"prompt must be a non-empty string, got {prompt!r}")
        return [{"role": "user", "content": [{"type": "image"}] * num_images + [{"type": "text", "text": prompt}]}]
    if not isinstance(messages, list) or not messages:
        raise PromptError(f"messages must be a non-empty list of {{role, content}} dicts, got {messages!r}")
    normalized, placeholders, has_text = [], 0, False
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise PromptError(f"messages[{i}] must be a dict with role system|user|assistant, got {message!r}")
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise PromptError(f"messages[{i}].content must be a string or a list, got {content!r}")
        for part in parts:
            if not isinstance(part, dict) or part.get("type") not in ("text", "image"):
                raise PromptError(f"messages[{i}].content has an invalid part {part!r}")
            placeholders += part["type"] == "image"
            has_text |= part["type"] == "text" and bool(str(part.get("text", "")).strip())
        normalized.append({"role": message["role"], "content": list(parts)})
    if not has_text:
        raise PromptError("messages hold no text: the prompt is empty")
    if placeholders == 0:
        first_user = next((m for m in normalized if m["role"] == "user"), None)
        if first_user is None:
            raise PromptError("messages have no user turn to attach the images to")
        first_user["content"] = [{"type": "image"}] * num_images + first_user["content"]
    elif placeholders != num_images:
        raise PromptError(f"messages hold {placeholders} image placeholder(s) but {num_images} image(s) were given")
    return normalized


def check_prompt_length(num_tokens: int, max_prompt_tokens: int, query_tokens: int, max_new_tokens: int,
                        context: int) -> None:
    if num_tokens > max_prompt_tokens:
        raise PromptError(f"prompt is {num_tokens} tokens (images included); the limit is {max_prompt_tokens}")
    if num_tokens + max(query_tokens, max_new_tokens) > context:
        raise PromptError(f"prompt of {num_tokens} tokens + max(query tokens {query_tokens}, max_new_tokens "
                          f"{max_new_tokens}) exceeds the context length {context}")
