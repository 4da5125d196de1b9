"""What one reasoning step returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

STAGES = ("vision", "prefill", "adapter", "denoise", "vae", "text")


@dataclass
class Timings:
    """Seconds per stage, the whole step's wall time, and when each stage ran.

    `spans[stage] = (start, end)` in seconds since the request started (one clock for every thread), so the
    overlap of the text and video branches can be seen and plotted."""

    stages: dict[str, float] = field(default_factory=dict)
    total: float = 0.0
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __getattr__(self, name: str) -> float:
        if name in STAGES:
            return self.stages.get(name, 0.0)
        raise AttributeError(name)

    def to_dict(self) -> dict[str, float]:
        optional = {s: round(v, 6) for s, v in self.stages.items() if s not in STAGES}  # e.g. "verify"
        return {**{s: round(self.stages.get(s, 0.0), 6) for s in STAGES}, **optional, "total": round(self.total, 6)}

    def spans_dict(self) -> dict[str, list[float]]:
        return {k: [round(a, 6), round(b, 6)] for k, (a, b) in self.spans.items()}

    def overlap_fraction(self) -> float:
        """Share of the shorter branch (text vs adapter..vae) that ran at the same time as the other; 0 when
        either is missing."""
        video = [self.spans[s] for s in ("adapter", "denoise", "vae") if s in self.spans]
        if "text" not in self.spans or not video:
            return 0.0
        text = self.spans["text"]
        video_span = (min(a for a, _ in video), max(b for _, b in video))
        shared = max(0.0, min(text[1], video_span[1]) - max(text[0], video_span[0]))
        shorter = min(text[1] - text[0], video_span[1] - video_span[0])
        return shared / shorter if shorter > 0 else 0.0


@dataclass
class Prediction:
    text: str
    token_ids: list[int]
    frames: np.ndarray  # uint8 [F, H, W, 3]
    world_latent: torch.Tensor  # [Q, D_vlm]
    video_latent: torch.Tensor  # normalised LTX latents [C, f, h, w]
    timings: Timings
    settings: dict[str, Any]
    verification: Any = None  # foresight_engine.verify.Verification when `actual=` was given


    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors)."""
        return {"text": self.text, "token_ids": list(self.token_ids), "timings": self.timings.to_dict(),
                "spans": self.timings.spans_dict(),
                "settings": dict(self.settings), "frames_shape": list(self.frames.shape),
                **({"verification": self.verification.to_dict()} if self.verification is not None else {})}
