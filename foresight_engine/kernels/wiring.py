"""Where model code calls the custom ops: by default on the device types where the kernel bench
(`bench/test_kernels.py`, the README's kernel table) measured a win; `FORESIGHT_KERNELS=all` calls every op on every
device, `FORESIGHT_KERNELS=off` none (`set_wiring()` does the same for a block of code, process-wide)."""
from __future__ import annotations

import contextlib
import os

import torch

from ..errors import KernelError

OPS = ("varlen_attention", "rmsnorm_modulate", "rmsnorm_rope")
# device types where the op beats the code it replaces (README, Custom kernels: the kernel table). On the CPU
# rmsnorm_modulate beats eager code but not inductor's fused loop: code traced by torch.compile leaves it out.
WINS: dict[str, frozenset[str]] = {
    "varlen_attention": frozenset({"cpu"}),
    "rmsnorm_modulate": frozenset({"cpu"}),
    "rmsnorm_rope": frozenset({"cpu"}),
}
MODES = ("auto", "all", "off")
_mode = os.environ.get("FORESIGHT_KERNELS", "auto")


def wired(op: str, device: torch.device | str) -> bool:
    """Whether model code should call `op` on `device`."""
    if op not in OPS:
        raise KernelError(f"unknown kernel {op!r}; known: {OPS}")
    if _mode not in MODES:
        raise KernelError(f"FORESIGHT_KERNELS={_mode!r}: choose one of {MODES}")
    return _mode == "all" or (_mode == "auto" and torch.device(device).type in WINS[op])


def wired_ops(device: torch.device | str) -> frozenset[str]:
    return frozenset(op for op in OPS if wired(op, device))


@contextlib.contextmanager
def set_wiring(mode: str):
    """`with set_wiring("off"): ...` runs model code without the custom ops ("all": with all of them)."""
    global _mode
    if mode not in MODES:
        raise KernelError(f"set_wiring({mode!r}): choose one of {MODES}")
    previous, _mode = _mode, mode
    try:
        yield
    finally:
        _mode = previous
