"""Limits and behaviour of one served app (`create_app(engine, **options)`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

VIDEO_MODES = ("base64", "url")


@dataclass(frozen=True)
class ServeOptions:
    max_upload_bytes: int = 32 * 1024 * 1024  # a whole request: every image + the settings (413 above it)
    max_images: int | None = None  # None: the model's own limit (config.processor.max_images)
    video: str = "base64"  # default video delivery: "base64" in the JSON, or "url" under /v1/videos/{id}
    video_store_items: int = 64  # recent videos kept in memory for /v1/videos/{id}, oldest dropped first
    video_store_bytes: int = 256 * 1024 * 1024
    retry_after_s: int = 1  # Retry-After sent with 429 when the engine's queue is full
    warmup: bool = True  # run one small predict() before /readyz says ready
    warmup_settings: dict[str, Any] | None = None  # None: the preset's shape, 1 step, 1 token
    # Threads waiting on engine calls (one per request in flight): keep it above the engine's max_queue_size,
    # or requests wait for a thread here instead of being queued or refused (429) by the engine.
    worker_threads: int = 64

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "video_store_items", "video_store_bytes", "retry_after_s", "worker_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"serve option {name}={value!r} must be a positive integer")
        value = self.max_images
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ConfigError(f"serve option max_images={value!r} must be a positive integer or None")
        if self.video not in VIDEO_MODES:
            raise ConfigError(f"serve option video={self.video!r} must be one of {VIDEO_MODES}")
