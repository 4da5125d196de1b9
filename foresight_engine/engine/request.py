"""Request checking: every argument of `predict()` is validated here, before any model runs.

Each check raises a typed error (`foresight_engine.errors`) that names the bad value.
"""
from __future__ import annotations

import io
import math
import re
import reprlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..config import ModelConfig
from ..errors import ImageError, InvalidInputError, PromptError, RequestTooLarge

ImageInput = Image.Image | np.ndarray | str | Path | bytes


SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes a 64-bit unsigned seed


@dataclass(frozen=True)
class Settings:
    """The resolved per-request settings (request arguments over the preset's defaults); plain Python numbers."""

    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float
    max_new_tokens: int
    seed: int
    frame_rate: int

    @property
    def cfg_batch(self) -> int:
        """The denoiser's batch: 2 with classifier-free guidance (unconditional + conditional), else 1."""
        return 2 if self.guidance_scale > 1 else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidInputError(f"{name} must be an integer, got {value!r}")
    return int(value)  # numpy integers become Python ints: no overflow in the checks, JSON-ready


def _in_range(name: str, value: int | float, low: int | float, high: int | float, why: str = "") -> None:
    if not low <= value <= high:
        raise InvalidInputError(f"{name}={value!r} must be in [{low}, {high}]{why}")


def resolve_settings(config: ModelConfig, *, height=None, width=None, num_frames=None, num_inference_steps=None,
                     guidance_scale=None, max_new_tokens=None, seed=0, frame_rate=None) -> Settings:
    """The request's settings, each checked against `config.generation.limits` (the one place requests are
    validated: the Python API, the CLI and the server all come here)."""
    gen, lim = config.generation, config.generation.limits
    given = dict(height=gen.height if height is None else height, width=gen.width if width is None else width,
                 num_frames=gen.num_frames if num_frames is None else num_frames,
                 num_inference_steps=gen.num_inference_steps if num_inference_steps is None else num_inference_steps,
                 max_new_tokens=gen.max_new_tokens if max_new_tokens is None else max_new_tokens,
                 seed=seed, frame_rate=gen.frame_rate if frame_rate is None else frame_rate)
    ints = {name: _integer(name, value) for name, value in given.items()}
    step, r = config.spatial_step, config.temporal_step
    for name in ("height", "width"):
        value = ints[name]
        if not 0 < value <= lim.max_side or value % step:
            raise InvalidInputError(f"{name}={value} must be a positive multiple of {step} (the decoder's spatial "
                                    f"step) up to {lim.max_side} (generation.limits.max_side of {config.name!r})")
    frames = ints["num_frames"]
    if not 0 < frames <= lim.max_frames or (frames - 1) % r:
        raise InvalidInputError(f"num_frames={frames} must be of the form {r}*k+1 (e.g. {r + 1} or {2 * r + 1}) "
                                f"up to {lim.max_frames} (generation.limits.max_frames of {config.name!r})")
    _in_range("num_inference_steps", ints["num_inference_steps"], 1, lim.max_inference_steps)
    _in_range("max_new_tokens", ints["max_new_tokens"], 0, lim.max_new_tokens)
    _in_range("seed", ints["seed"], 0, SEED_MAX, " (the generator's range, 2**64 - 1 at most)")
    _in_range("frame_rate", ints["frame_rate"], 1, lim.max_frame_rate, " frames per second")
    guidance = gen.guidance_scale if guidance_scale is None else guidance_scale
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float, np.integer, np.floating)) \
            or not math.isfinite(guidance) or not 1 <= guidance <= lim.max_guidance_scale:
        raise InvalidInputError(f"guidance_scale={guidance!r} must be a finite number in [1, "
                                f"{lim.max_guidance_scale}] (1 disables CFG)")
    return Settings(guidance_scale=float(guidance), **ints)


@dataclass(frozen=True)
class RequestCost:
    """A request's work in token passes: every latent token through the transformer at every step, for each CFG
    branch; every latent token through the VAE decoder once; every text token decoded."""

    latent_tokens: int
    steps: int
    cfg_batch: int
    text_tokens: int

    @property
    def total(self) -> int:
        return self.latent_tokens * (self.steps * self.cfg_batch + 1) + self.text_tokens

    def describe(self) -> str:
        return (f"{self.total:,} token passes ({self.latent_tokens} latent tokens x {self.steps} steps x CFG batch "
                f"{self.cfg_batch} + {self.latent_tokens} VAE-decoded + {self.text_tokens} text tokens)")


def check_cost(settings: Settings, latent_tokens: int, budget: int) -> RequestCost:
    """The request's cost; `RequestTooLarge` (stating the budget) when it exceeds `budget`."""
    cost = RequestCost(latent_tokens, settings.num_inference_steps, settings.cfg_batch, settings.max_new_tokens)
    if cost.total > budget:
        raise RequestTooLarge(f"request cost {cost.describe()} exceeds the budget max_request_cost={budget:,} token "
                              "passes; lower num_inference_steps, num_frames, height/width or max_new_tokens, or "
                              "use guidance_scale=1")
    return cost


class TextGuard:
    """Refuses user text the model would not read as plain text: the tokenizer's control tokens (its special and
    added tokens: chat-role markers, image/video placeholders; a user could forge turns or break the image
    layout with them) and invalid Unicode (lone surrogates); and more characters than the prompt limit could
    ever hold (before anything is tokenised)."""

    def __init__(self, tokenizer, max_prompt_tokens: int):
        control = set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab())
        self.control_tokens = tuple(sorted(control, key=lambda t: (-len(t), t)))
        self._pattern = re.compile("|".join(map(re.escape, self.control_tokens))) if control else None
        backend = getattr(tokenizer, "backend_tokenizer", None)
        normalizer = getattr(backend, "normalizer", None)
        self._normalize = normalizer.normalize_str if normalizer is not None else None
        # a token spans at most `longest` characters, so longer text is over the token limit whatever it says
        longest = max((len(token) for token in tokenizer.get_vocab()), default=1)
        self.max_prompt_tokens = max_prompt_tokens
        self.max_chars = max_prompt_tokens * max(longest, 1)

    def check(self, where: str, text: str) -> None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PromptError(f"{where} is not valid Unicode: {text[exc.start:exc.end]!r} at character {exc.start} "
                              f"({exc.reason})") from None
        if self._pattern is None:
            return
        # the tokenizer matches added tokens in the text as given, and normalized ones after its normalizer
        candidates = (text,) if self._normalize is None else (text, self._normalize(text))
        for candidate in candidates:
            found = self._pattern.search(candidate)
            if found:
                raise PromptError(f"{where} contains the control token {found.group()!r} (at character "
                                  f"{found.start()}): the chat template's markers are not allowed in user text")


def load_image(image: ImageInput, index: int = 0, max_pixels: int | None = None) -> Image.Image:
    """Decode one image fully (truncated files fail here, not in the model) and convert it to RGB; one of more than
    `max_pixels` pixels is refused from its header, before it is decoded (PIL refuses decompression bombs too)."""
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
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ImageError(f"{where}: image is {img.width}x{img.height} = {img.width * img.height:,} pixels; the "
                             f"limit is {max_pixels:,} (generation.limits.max_image_pixels)")
        img.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{where}: cannot decode image ({exc})") from exc
    if img.width == 0 or img.height == 0:
        raise ImageError(f"{where}: image is {img.width}x{img.height}")
    return img.convert("RGB") if img.mode != "RGB" else img


def load_images(images: ImageInput | Sequence[ImageInput], max_images: int,
                max_pixels: int | None = None) -> list[Image.Image]:
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ImageError("no image given: at least one image is required (the last one conditions the video)")
    if len(items) > max_images:
        raise ImageError(f"{len(items)} images given; at most {max_images} are allowed")
    return [load_image(item, i, max_pixels) for i, item in enumerate(items)]


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 80, 80, 4, 4


def _short(value: Any) -> str:
    """A bounded repr of user data (deep or huge values must not recurse or flood the message)."""
    return _REPR.repr(value)


def build_messages(prompt: str | None, messages: list[dict] | None, num_images: int,
                   guard: TextGuard | None) -> list[dict]:
    """A chat (list of {role, content}) whose image placeholders match `num_images`; every text in it (the prompt,
    and each text part of every turn, system and assistant included) passes `guard` (None: the structure only, for
    a check before the tokenizer is loaded).

    A plain `prompt` becomes one user turn with every image first. Given `messages` without image entries,
    the images are placed at the start of the first user turn; with image entries, their count must match."""
    if (prompt is None) == (messages is None):
        raise PromptError("give exactly one of prompt= or messages=")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError(f"prompt must be a non-empty string, got {_short(prompt)}")
        _check_texts(guard, [("prompt", prompt)], parts=1)
        return [{"role": "user", "content": [{"type": "image"}] * num_images + [{"type": "text", "text": prompt}]}]
    if not isinstance(messages, list) or not messages:
        raise PromptError(f"messages must be a non-empty list of {{role, content}} dicts, got {_short(messages)}")
    normalized, placeholders, texts, parts_seen = [], 0, [], 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise PromptError(f"messages[{i}] must be a dict with role system|user|assistant, got {_short(message)}")
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise PromptError(f"messages[{i}].content must be a string or a list, got {_short(content)}")
        for j, part in enumerate(parts):
            if not isinstance(part, dict) or part.get("type") not in ("text", "image"):
                raise PromptError(f"messages[{i}].content has an invalid part {_short(part)}")
            placeholders += part["type"] == "image"
            if part["type"] == "text":
                where = f"messages[{i}].content" + (f"[{j}].text" if parts is content else "")
                if not isinstance(part.get("text"), str):
                    raise PromptError(f"{where} must be a string, got {_short(part.get('text'))}")
                texts.append((where, part["text"]))
        parts_seen += 1 + len(parts)
        normalized.append({"role": message["role"], "content": list(parts)})
    _check_texts(guard, texts, parts_seen)
    if not any(text.strip() for _, text in texts):
        raise PromptError("messages hold no text: the prompt is empty")
    if placeholders == 0:
        first_user = next((m for m in normalized if m["role"] == "user"), None)
        if first_user is None:
            raise PromptError("messages have no user turn to attach the images to")
        first_user["content"] = [{"type": "image"}] * num_images + first_user["content"]
    elif placeholders != num_images:
        raise PromptError(f"messages hold {placeholders} image placeholder(s) but {num_images} image(s) were given")
    return normalized


def _check_texts(guard: TextGuard | None, texts: list[tuple[str, str]], parts: int) -> None:
    """Bounded before anything is rendered or tokenised: every turn and part costs at least one prompt token, every
    token spans at most `guard.max_chars / max_prompt_tokens` characters."""
    if guard is None:
        return
    chars = sum(len(text) for _, text in texts)
    if parts > guard.max_prompt_tokens or chars > guard.max_chars:
        raise PromptError(f"the prompt holds {parts} turns/parts and {chars} characters: more than its limit of "
                          f"{guard.max_prompt_tokens} tokens can hold")
    for where, text in texts:
        guard.check(where, text)


def check_prompt_length(num_tokens: int, max_prompt_tokens: int, query_tokens: int, max_new_tokens: int,
                        context: int) -> None:
    if num_tokens > max_prompt_tokens:
        raise PromptError(f"prompt is {num_tokens} tokens (images included); the limit is {max_prompt_tokens}")
    if num_tokens + max(query_tokens, max_new_tokens) > context:
        raise PromptError(f"prompt of {num_tokens} tokens + max(query tokens {query_tokens}, max_new_tokens "
                          f"{max_new_tokens}) exceeds the context length {context}")
