"""CPU thread counts per pipeline stage group.

`torch.set_num_threads` writes the calling thread's OpenMP setting (ATen's OpenMP backend), so each branch
sets its own count when it starts: the text branch's single-row matmuls do not get faster with more threads but
do steal cores from the denoiser. See README "Runtime" for the measured splits.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import ConfigError

CORES = os.cpu_count() or 1


@dataclass(frozen=True)
class ThreadSplit:
    front: int = CORES  # vision + prefill, and the whole step when overlap is off
    video: int = CORES  # adapter -> denoise -> VAE
    text: int = 1  # greedy decode

    def __post_init__(self):
        for name in ("front", "video", "text"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ThreadSplit.{name}={value!r} must be an integer >= 1")


@contextmanager
def use_threads(n: int):
    """`n` intra-op threads for the calling thread inside the block; the caller's count is restored after."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
