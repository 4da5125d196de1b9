"""The wire format: request settings in, JSON messages out, and which HTTP status each failure maps to.

Every typed error maps to a 4xx (the client can fix or retry it: 422 invalid, 429 busy, 499 cancelled) or to 503
(shutting down) / 504 (timeout); a 500 means an unexpected exception, a bug.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from ..engine.events import DenoiseStep, FramesReady, TextToken
from ..engine.prediction import Prediction
from ..errors import (ArtifactError, ConfigError, EngineClosed, InvalidInputError, NonFiniteError, QueueFull,
                      RequestCancelled, RequestTimeout)
from .options import VIDEO_MODES

# predict()'s keyword arguments a client may set (images come as uploads, request_id is the server's).
PREDICT_SETTINGS = ("prompt", "messages", "height", "width", "num_frames", "num_inference_steps", "guidance_scale",
                    "max_new_tokens", "seed", "frame_rate", "timeout_s")
CLIENT_CLOSED = 499  # nginx's "client closed request": the client went away and the request was cancelled
MAX_JSON_DEPTH = 8  # settings nest 5 deep at most ({messages: [{content: [{text}]}]})


class Rejected(Exception):
    """A request the server refuses before (or instead of) running it: `status` is the HTTP status."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class ClientRequest:
    images: list[bytes]  # encoded image files, decoded and checked by the engine
    kwargs: dict[str, Any]  # predict()'s keyword arguments
    video: str  # "base64" | "url"


def parse_settings(settings: Any, images: list[bytes], default_video: str, max_images: int) -> ClientRequest:
    """Check a settings object (predict()'s keyword arguments + `video`) and the image count."""
    if not isinstance(settings, dict):
        raise Rejected(422, f"settings must be a JSON object, got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(PREDICT_SETTINGS) - {"video"})
    if unknown:
        raise Rejected(422, f"unknown setting(s) {unknown}; allowed: {list(PREDICT_SETTINGS) + ['video']}")
    kwargs = {k: v for k, v in settings.items() if k != "video"}
    video = settings.get("video", default_video)
    if video not in VIDEO_MODES:
        raise Rejected(422, f"video={video!r} must be one of {list(VIDEO_MODES)}")
    if not images:
        raise Rejected(422, "no image given: at least one image is required (the last one conditions the video)")
    if len(images) > max_images:
        raise Rejected(422, f"{len(images)} images given; at most {max_images} are allowed")
    return ClientRequest(images=images, kwargs=kwargs, video=video)


def parse_settings_field(text: str | bytes) -> Any:
    """A JSON value (its size is bounded by the upload limit), refused when it nests deeper than `MAX_JSON_DEPTH`."""
    try:
        value = json.loads(text)  # bytes: UTF-8 (or -16/-32), as JSON allows
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Rejected(422, f"settings is not valid JSON ({exc})") from None
    except RecursionError:  # the parser recurses per level: thousands of levels exhaust the stack
        raise Rejected(422, f"settings nest deeper than {MAX_JSON_DEPTH} levels") from None
    if _deeper_than(value, MAX_JSON_DEPTH):
        raise Rejected(422, f"settings nest deeper than {MAX_JSON_DEPTH} levels")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether JSON `value` nests objects/arrays deeper than `limit` (iterative: no recursion on hostile input)."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def parse_stream_message(text: str | bytes, default_video: str, max_images: int) -> ClientRequest:
    """The WebSocket's one request message: {"images": [base64 image files], ...settings}."""
    message = parse_settings_field(text)
    if not isinstance(message, dict):
        raise Rejected(422, f"the message must be a JSON object, got {type(message).__name__}")
    encoded = message.pop("images", None)
    if not isinstance(encoded, list) or not all(isinstance(item, str) for item in encoded):
        raise Rejected(422, "images must be a list of base64-encoded image files")
    images = []
    for i, item in enumerate(encoded):
        try:
            images.append(base64.b64decode(item, validate=True))
        except (binascii.Error, ValueError):
            raise Rejected(422, f"images[{i}] is not valid base64") from None
    return parse_settings(message, images, default_video, max_images)


def error_status(exc: BaseException) -> int:
    """The HTTP status of an engine error; 500 for anything unexpected (a bug)."""
    if isinstance(exc, Rejected):
        return exc.status
    if isinstance(exc, QueueFull):
        return 429
    # invalid settings or text; over the budget; a shape a built artifact was not built for; a request whose
    # settings drove the model to NaN/inf (the message names the stage)
    if isinstance(exc, (InvalidInputError, ConfigError, ArtifactError, NonFiniteError)):
        return 422
    if isinstance(exc, RequestTimeout):
        return 504
    if isinstance(exc, EngineClosed):
        return 503
    if isinstance(exc, RequestCancelled):
        return CLIENT_CLOSED
    return 500


def error_detail(exc: BaseException, status: int) -> str:
    # Engine errors name the bad value; an unexpected failure's message stays in the server log.
    return str(exc) if status < 500 or isinstance(exc, (RequestTimeout, EngineClosed)) \
        else "internal error (see the server log)"


def event_message(event: TextToken | DenoiseStep | FramesReady) -> dict[str, Any]:
    """One streamed event as a JSON-ready message (frames travel once, as mp4, in the `done` message)."""
    if isinstance(event, TextToken):
        return {"type": "text", "request_id": event.request_id, "index": event.index, "token_id": event.token_id,
                "text": event.text}
    if isinstance(event, DenoiseStep):
        return {"type": "denoise", "request_id": event.request_id, "step": event.step, "total": event.total}
    if isinstance(event, FramesReady):
        return {"type": "frames", "request_id": event.request_id, "shape": list(event.frames.shape)}
    raise TypeError(f"no message for event {type(event).__name__}")


def prediction_body(request_id: str, prediction: Prediction, video: dict[str, str]) -> dict[str, Any]:
    """The final result: text, token ids, timings, settings and `video` ({video_mp4_base64} or {video_url})."""
    return {"request_id": request_id, **prediction.to_dict(), **video}


def encode_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
