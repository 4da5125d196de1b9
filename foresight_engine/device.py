"""The one place a device string is resolved and checked (shared by the engine, builders and the CLI).

`resolve_device("cuda")` on a machine without CUDA raises `DeviceUnavailable` naming CUDA at once, before any
weights are read; only `cpu` and `cuda[:N]` are devices this engine runs on.
"""
from __future__ import annotations

import torch

from .errors import ConfigError, DeviceUnavailable

DEVICE_TYPES = ("cpu", "cuda")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`device` (None: the CPU) as a `torch.device`, checked to exist here."""
    if device is None:
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device={device!r} is not a device; use one of {list(DEVICE_TYPES)} (or cuda:N)") from None
    if resolved.type not in DEVICE_TYPES:
        raise ConfigError(f"device={device!r}: this engine runs on {list(DEVICE_TYPES)}, not {resolved.type!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(
                f"device={str(device)!r} needs CUDA, but torch.cuda.is_available() is False here (no CUDA GPU or "
                f"driver, or a CPU-only torch {torch.__version__}); use device='cpu'")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise DeviceUnavailable(f"device={str(device)!r}: this machine has {count} CUDA device(s)")
    return resolved


__all__ = ["DEVICE_TYPES", "resolve_device"]
