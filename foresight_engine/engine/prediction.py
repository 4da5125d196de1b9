"""What one reasoning step returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

STAGES = ("vision", "prefill", "adapter", "denoise", "vae", "text")


@dataclass
class Timings:
    """Seconds per stage, and the whole step's wall time."""

    stages: dict[str, float] = field(default_factory=dict)
    total: float = 0.0

    def __getattr__(self, name: str) -> float:
        if name in STAGES:
            return self.stages.get(name, 0.0)
        raise AttributeError(name)

    def to_dict(self) -> dict[str, float]:
        return {**{s: round(self.stages.get(s, 0.0), 6) for s in STAGES}, "total": round(self.total, 6)}


@dataclass
class Prediction:
    text: str
    token_ids: list[int]
    frames: np.ndarray  # uint8 [F, H, W, 3]
    world_latent: torch.Tensor  # [Q, D_vlm]
    video_latent: torch.Tensor  # normalised LTX latents [C, f, h, w]
    timings: Timings
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors)."""
        return {"text": self.text, "token_ids": list(self.token_ids), "timings": self.timings.to_dict(),
                "settings": dict(self.settings), "frames_shape": list(self.frames.shape)}
