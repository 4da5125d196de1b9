"""Videos for clients: mp4 bytes from frames, and a bounded in-memory store behind /v1/videos/{id}."""
from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..video_io import write_mp4


def encode_mp4(frames: np.ndarray, fps: int) -> bytes:
    """H.264 mp4 bytes of uint8 frames [F, H, W, 3] (through `write_mp4`, which needs a file)."""
    with tempfile.TemporaryDirectory(prefix="foresight-serve-") as tmp:
        return write_mp4(frames, Path(tmp) / "video.mp4", fps=fps).read_bytes()


class VideoStore:
    """The most recent videos, at most `max_items` of them and `max_bytes` in total; the oldest go first."""

    def __init__(self, max_items: int, max_bytes: int):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._videos: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def put(self, video_id: str, data: bytes) -> bool:
        """Keep `data` under `video_id`; False when it alone is larger than the store."""
        if len(data) > self.max_bytes:
            return False
        with self._lock:
            self._bytes += len(data) - len(self._videos.pop(video_id, b""))
            self._videos[video_id] = data
            while len(self._videos) > self.max_items or self._bytes > self.max_bytes:
                _, dropped = self._videos.popitem(last=False)
                self._bytes -= len(dropped)
        return True

    def get(self, video_id: str) -> bytes | None:
        with self._lock:
            return self._videos.get(video_id)

    def __len__(self) -> int:
        return len(self._videos)
