"""A demo of one reasoning step in the browser (Gradio; the optional `[ui]` extra).

`create_demo(engine)` returns a `gradio.Blocks` app over an `Engine` (a preset, a built artifact or real
weights): images + a prompt in; the answer streams token by token while a bar follows the denoising; the
predicted clip plays, with a slider to scrub its frames; the request's stage timeline; and, given a video of
what really happened, the verification scores and curves. `foresight-engine ui` runs it. Only the engine's
public API is used (`Engine.stream`, its events, `Prediction`, `verify`).
"""
from __future__ import annotations

from typing import Any

__all__ = ["create_demo"]


def __getattr__(name: str) -> Any:
    if name == "create_demo":  # imported on use: gradio is heavy and optional
        from .app import create_demo
        return create_demo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
