"""CPU thread counts per pipeline stage group.

`torch.set_num_threads` writes the *calling thread's* OpenMP setting (ATen's OpenMP backend; checked: a worker
that sets 1 leaves another thread's matmuls at full speed, though `torch.get_num_threads()` then reports the
last value set anywhere), so each branch sets its own count. A branch keeps ONE count for the whole request:
CPU kernels split their reductions by thread count, so switching counts at a moment that depends on the other
branch's progress would make the same seed give (slightly) different frames. See README "Runtime" for the
measured splits.
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
    video: int = CORES  # adapter -> denoise -> VAE, overlapped with the text branch
    text: int = 1  # greedy decode (one-row matmuls: a second thread buys little)
    spatial: int = 1  # the hybrid encoder's DINOv2, beside vision + prefill

    def __post_init__(self):
        for name in ("front", "video", "text", "spatial"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ThreadSplit.{name}={value!r} must be an integer >= 1")


def set_threads(n: int) -> None:
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


@contextmanager
def use_threads(n: int):
    """`n` intra-op threads for the calling thread inside the block; the count read on entry is restored after."""
    before = torch.get_num_threads()
    set_threads(n)
    try:
        yield
    finally:
        set_threads(before)
