"""The non-finite guard: NaN/inf at a stage boundary is a typed error naming the stage, never a black video.

`watch(stage, tensor)` queues one reduction on the tensor's device (`isfinite(t).all()`: no sync, graph-safe, so on
a CUDA-graph path it runs after the replay); `check()` reads every queued flag with one host copy, after the frames
came to the host anyway, and raises for the first stage (in pipeline order) that produced a non-finite value.
"""
from __future__ import annotations

import torch

from ..errors import NonFiniteError


class FiniteGuard:
    def __init__(self) -> None:
        self._flags: list[tuple[str, torch.Tensor]] = []

    def watch(self, stage: str, tensor: torch.Tensor) -> None:
        self._flags.append((stage, torch.isfinite(tensor).all()))

    def check(self, hint: str = "") -> None:
        if not self._flags:
            return
        finite = torch.stack([flag for _, flag in self._flags]).cpu().tolist()  # the one host read
        for (stage, _), ok in zip(self._flags, finite):
            if not ok:
                raise NonFiniteError(stage, f"the {stage} stage produced NaN or inf values; no video is returned "
                                            f"rather than a black or garbage one{hint}")


__all__ = ["FiniteGuard"]
