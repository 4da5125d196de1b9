"""Typed, immutable results of `verify`."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TemporalConsistency:
    """Mean cosine similarity of consecutive frames' features, for each aligned clip (None for 1-frame clips).

    `features` names what was compared: the LPIPS trunk's pooled features, or downsampled pixels when no
    LPIPS weights were available. Compare `predicted` with `actual`, not with 1.
    """

    predicted: float | None
    actual: float | None
    features: str


@dataclass(frozen=True)
class Verification:
    """Predicted-vs-actual video metrics over the aligned clips (`frames` frames of `height` x `width`).

    `psnr` is the mean of `psnr_per_frame` in dB, so it is `inf` as soon as one frame pair is pixel-identical
    (that frame's PSNR is inf); the other frames' values stay readable in `psnr_per_frame`.
    `lpips` and `lpips_per_frame` are None when no LPIPS weights were found; `lpips_missing` then says why.
    """

    psnr: float
    ssim: float
    lpips: float | None
    temporal_consistency: TemporalConsistency
    psnr_per_frame: tuple[float, ...]
    ssim_per_frame: tuple[float, ...]
    lpips_per_frame: tuple[float, ...] | None
    alignment: str
    lpips_net: str
    lpips_missing: str | None
    frames: int
    height: int
    width: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: tuples as lists, infinite PSNR (identical frames) as the string "inf" so strict JSON
        parsers accept it."""
        def plain(value: Any) -> Any:
            if isinstance(value, (tuple, list)):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return "inf" if isinstance(value, float) and math.isinf(value) else value
        return plain(asdict(self))

    def summary(self) -> str:
        """A few human-readable lines."""
        def fmt(value: float | None, unit: str = "") -> str:
            if value is None:
                return "n/a"
            return "inf (identical)" if math.isinf(value) else f"{value:.4f}{unit}"

        tc = self.temporal_consistency
        why_no_lpips = f"  ({self.lpips_missing})" if self.lpips_missing else ""
        lines = [
            f"frames compared: {self.frames} at {self.height}x{self.width}",
            f"alignment:       {self.alignment}",
            f"PSNR:            {fmt(self.psnr, ' dB')}",
            f"SSIM:            {fmt(self.ssim)}",
            f"LPIPS ({self.lpips_net}):    {fmt(self.lpips)}{why_no_lpips}",
            f"temporal consistency ({tc.features}): predicted {fmt(tc.predicted)}, actual {fmt(tc.actual)}",
        ]
        return "\n".join(lines)
