"""Interruption points inside long model calls, so that a cancel or a timeout takes effect within one block.

The runtime runs a request's work inside `interruptible(check)`; `interruption_point()` calls that `check` (which
raises to stop). Points are placed
- explicitly where the project owns the loop (the static plan calls one before each transformer block), and
- as forward pre-hooks (`add_interruption_points`) before every block of a module: every item of an
  `nn.ModuleList` that has submodules of its own (a diffusers transformer's blocks, a VAE's up/down blocks and
  their ResNets). That needs nothing from a model family: any decoder built from block lists gets them.

`check` must read host-side state only (a flag, the clock), never a device value, so the points cost no sync and
are safe inside work a CUDA graph captures: while a graph is captured they are switched off (`interruptible(None)`),
and a replay runs no Python at all, so under a graph a cancel lands between replays. Under torch.compile/export
tracing the hook does nothing (compiled and built stages are interrupted between stage calls only).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

Check = Callable[[], None]

_local = threading.local()  # each request's work runs on its own thread(s): the check is per thread
_HOOKED = "_foresight_interruption_point"  # marks a module that has the hook (idempotent; survives deepcopy)


@contextmanager
def interruptible(check: Check | None) -> Iterator[None]:
    """Run the body with `check` called at every interruption point on this thread (None: no checks)."""
    previous = getattr(_local, "check", None)
    _local.check = check
    try:
        yield
    finally:
        _local.check = previous


def interruption_point() -> None:
    """Call this thread's check, if any (it raises to stop the work)."""
    check = getattr(_local, "check", None)
    if check is not None:
        check()


def _before_block(module: nn.Module, args) -> None:
    if not torch.compiler.is_compiling():  # traced code keeps no Python side effects
        interruption_point()


def add_interruption_points(module: nn.Module) -> int:
    """A pre-hook calling `interruption_point()` before every block of `module` (see the module docstring);
    idempotent. Returns how many blocks have one."""
    count = 0
    for child in module.modules():
        if not isinstance(child, nn.ModuleList):
            continue
        for block in child:
            if next(block.children(), None) is None:  # a leaf (Linear, Dropout): not a block
                continue
            if not getattr(block, _HOOKED, False):
                block.register_forward_pre_hook(_before_block)
                setattr(block, _HOOKED, True)
            count += 1
    return count


__all__ = ["add_interruption_points", "interruptible", "interruption_point"]
