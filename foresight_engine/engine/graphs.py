"""CUDA graphs of the whole denoising loop (GPU only).

`GraphedDenoiser` captures every step of the loop (`models/denoising.py`), whatever computes the velocity (the
static plan, the eager forward, or a built stage whose backend is graphable), once per shape, and replays it with
each request's state copied into the captured inputs. Capture happens under the engine's stage locks (no other
request's work of this engine is queued meanwhile), with `capture_error_mode="thread_local"`.

`check_capturable` refuses a capture when any tensor the graph would read is not on a CUDA device (a CUDA graph
records only device work: such a graph would replay nothing or stale values). It runs BEFORE the CUDA check, so
it is exercised on machines without a GPU.
"""
from __future__ import annotations

import threading
from contextlib import nullcontext
from typing import Callable, ContextManager, Iterable

import torch

from ..errors import DeviceUnavailable, GraphCaptureError
from ..models.denoising import DenoiseLoop, StepProgram, VelocityModel, VelocityState, denoise, denoise_step
from ..models.interrupts import interruptible


def check_capturable(tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Raise `GraphCaptureError` naming the tensors a graph would read that are not on a CUDA device."""
    off = [f"{name} on {t.device}" for name, t in tensors if t.device.type != "cuda"]
    if off:
        shown = ", ".join(off[:4]) + (f" and {len(off) - 4} more" if len(off) > 4 else "")
        raise GraphCaptureError(f"refusing to capture a CUDA graph: {len(off)} tensor(s) it reads are not on a CUDA "
                                f"device ({shown}); put the engine on the GPU (Engine(..., device='cuda'))")


def _named(prefix: str, tensors: list[torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return [(f"{prefix}[{i}]", t) for i, t in enumerate(tensors)]


class GraphedDenoiser:
    def __init__(self) -> None:
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, VelocityState, DenoiseLoop]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(model: VelocityModel, state: VelocityState, loop: DenoiseLoop) -> tuple:
        shapes = tuple((t.shape, t.dtype, t.device) for t in [*state.tensors(), *loop.tensors()])
        ops = getattr(state, "ops", frozenset())  # custom ops the velocity calls: a different graph
        return (id(model), loop.num_steps, loop.batch, loop.pinned, ops, shapes)

    def run(self, model: VelocityModel, state: VelocityState, loop: DenoiseLoop,
            exclusive: Callable[[], ContextManager] = nullcontext,
            program: StepProgram = denoise_step) -> torch.Tensor:
        """The loop's final latents [1, S, C]; captures first when this shape is new (inside `exclusive()`)."""
        key = self._key(model, state, loop)
        with self._lock:
            if key not in self._graphs:
                with exclusive():
                    self._graphs[key] = (self._capture(model, state, loop, program), state, loop)
            graph, static_state, static_loop = self._graphs[key]
            for dst, src in zip([*static_state.tensors(), *static_loop.tensors()], [*state.tensors(), *loop.tensors()]):
                dst.copy_(src)
            graph.replay()
            return static_loop.latents.clone()

    @staticmethod
    def _capture(model: VelocityModel, state: VelocityState, loop: DenoiseLoop,
                 program: StepProgram = denoise_step) -> "torch.cuda.CUDAGraph":
        # the first request's state and loop become the graph's static inputs; later requests are copied into them
        check_capturable([*model.weights(), *_named("state", state.tensors()), *_named("loop", loop.tensors())])
        if not model.graphable:
            raise GraphCaptureError(f"{type(model).__name__} reads values back to the host every step (e.g. the step "
                                    "cache): it cannot be captured")
        if not torch.cuda.is_available():
            raise DeviceUnavailable("CUDA graphs need a CUDA GPU and a CUDA build of torch; none is available")
        start = loop.latents.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            denoise(model, state, loop, program=program)  # warm-up outside the graph (allocator, cuBLAS, lazy init)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"), interruptible(None):
            denoise(model, state, loop, program=program)  # no interruption points inside a capture: a cancel lands after the replay
        loop.latents.copy_(start)
        return graph
