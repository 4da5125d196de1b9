"""Helpers of the serve tests: a live server on loopback, PNG bytes, polling."""
from __future__ import annotations

import io
import socket
import time

import numpy as np
from PIL import Image

from foresight_engine.serve.background import BackgroundServer as LiveServer  # noqa: F401


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_until(condition, timeout_s: float = 60.0, what: str = "condition") -> None:
    """Poll `condition()` until true; the limit only stops a hung test, it asserts nothing about speed."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.02)
