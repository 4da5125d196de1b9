"""Typed events that `Engine.stream()` yields, in order of arrival.

Text tokens and denoising steps interleave (the two branches run at the same time); `FramesReady` comes once
the VAE has decoded; `Done` is always last and carries the full `Prediction`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .prediction import Prediction


@dataclass(frozen=True)
class TextToken:
    request_id: str
    index: int  # 0-based position in the answer
    token_id: int
    text: str  # the new text this token adds (may be "" while a multi-byte character is incomplete)


@dataclass(frozen=True)
class DenoiseStep:
    request_id: str
    step: int  # 1-based
    total: int


@dataclass(frozen=True)
class FramesReady:
    request_id: str
    frames: np.ndarray  # uint8 [F, H, W, 3]


@dataclass(frozen=True)
class Done:
    request_id: str
    prediction: Prediction


Event = TextToken | DenoiseStep | FramesReady | Done
