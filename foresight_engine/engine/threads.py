"""CPU thread counts per pipeline stage group.

`torch.set_num_threads` writes the *calling thread's* OpenMP setting (ATen's OpenMP backend; checked: a worker
that sets 1 leaves another thread's matmuls at full speed, though `torch.get_num_threads()` then reports the
last value set anywhere), so each branch sets its own count. With overlap on, the video branch runs on
`video_shared` threads while the text branch is still decoding and on `video` once it is done (re-set between
denoising steps): oversubscribing the cores (e.g. 2 + 1 threads on 2 cores) stalls OpenMP's barriers. See README
"Runtime" for the measured splits.
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
    video: int = CORES  # adapter -> denoise -> VAE once the text branch is done
    text: int = 1  # greedy decode (one-row matmuls: a second thread buys little)
    video_shared: int = max(1, CORES - 1)  # the video branch while the text branch still runs

    def __post_init__(self):
        for name in ("front", "video", "text", "video_shared"):
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
