"""Prediction-vs-actual video verification: PSNR, SSIM, LPIPS and temporal consistency per frame and mean.

Names are imported lazily (PEP 562) so that `python -m foresight_engine.verify.lpips_backbone` does not find
its own module already imported by this package, and importing the package stays cheap.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "verify": ".compare",
    "Verification": ".result",
    "TemporalConsistency": ".result",
    "LPIPS_NETS": ".lpips_names",
    "LpipsWeights": ".lpips_backbone",
    "convert": ".lpips_backbone",
    "load_lpips": ".lpips_backbone",
    "locate_lpips_weights": ".lpips_backbone",
    "save_lpips_weights": ".lpips_backbone",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
