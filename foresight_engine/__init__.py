"""foresight-engine: fast inference for one reasoning step of a vision-language world model.

The names below are imported on first use (PEP 562): `import foresight_engine` (and so the command line's
`--help` and `--version`) does not load torch, transformers or diffusers.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Engine": ".engine",
    "Prediction": ".engine",
    "Timings": ".engine",
    "ModelConfig": ".config",
    "preset": ".config",
    "ForesightError": ".errors",
}
__all__ = [*sorted(_EXPORTS), "__version__"]

if TYPE_CHECKING:
    from .config import ModelConfig, preset
    from .engine import Engine, Prediction, Timings
    from .errors import ForesightError


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
