"""TensorRT runner: a stage's serialized plan, run on torch CUDA tensors (GPU only, behind one capability check).

`require_tensorrt()` is the capability check (the registry's: a CUDA device and `tensorrt` >= 10, every missing
piece named); builders use it too before building plans.

`TensorRTStage` follows TensorRT demoDiffusion's pattern: the plan is deserialized once, its I/O is checked against
the stage's buffer plan (`buffers.py`, written by the builder and tested against the ONNX graph on the CPU), and one
device buffer per I/O tensor is allocated ONCE, for the plan's largest shapes. A call binds each input by address
(`set_tensor_address`): the caller's own tensor when it already has the right dtype and layout (the KV cache is
never copied), else the preallocated buffer it is copied into; outputs land in their preallocated buffers; then
`execute_async_v3` runs on the current torch stream. No host round trip, no allocation besides the returned
copies, so the engine's whole-loop CUDA graph can capture the denoising step's calls (`graphable` in the registry).

Outputs: the denoising step's velocity is returned as a view of its buffer (the loop consumes it before the next
step, under the engine's video lock); every other stage's outputs are copied out, because their callers keep them
across threads (the world latent, a decode step racing another request's).
"""
from __future__ import annotations

import importlib
import threading
from pathlib import Path

import torch

from ...artifact import StageEntry
from ...backends import Backend
from ...errors import ArtifactError, EngineBuildError, InvalidInputError
from . import RunnerContext, StageFn
from .buffers import BufferPlan, dtype_name, view

SHARED_OUTPUTS = frozenset({"denoise"})  # stages whose outputs are returned as views of the runner's buffers
_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
           "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8,
           "FP8": torch.float8_e4m3fn}


def require_tensorrt():
    """The imported `tensorrt` module, or `BackendUnavailable` naming every missing piece."""
    Backend.TENSORRT.spec.require("cuda")
    return importlib.import_module("tensorrt")


class TensorRTStage:
    """One stage's plan with its preallocated I/O buffers; `stage(*inputs)` like the eager stage wrapper."""

    def __init__(self, engine_path: str | Path, plan: BufferPlan, device: torch.device | str = "cuda",
                 shared_outputs: bool = False):
        trt = require_tensorrt()
        self.device = torch.device(device)
        self.plan = plan
        self.shared_outputs = shared_outputs
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise ArtifactError(f"rebuild needed: TensorRT {trt.__version__} cannot deserialize {engine_path} "
                                "(built by another TensorRT version, or for another GPU)")
        to_torch = {getattr(trt.DataType, k): v for k, v in _DTYPES.items() if hasattr(trt.DataType, k)}
        io = []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            dtype = to_torch.get(self.engine.get_tensor_dtype(name))
            io.append((name, is_input, dtype_name(dtype) if dtype else str(self.engine.get_tensor_dtype(name)),
                       tuple(self.engine.get_tensor_shape(name))))
        plan.check(io, f"TensorRT plan {engine_path}")
        self.context = self.engine.create_execution_context()
        with torch.cuda.device(self.device):
            self.buffers = plan.allocate(self.device)  # once, at the largest shapes
        for t in plan.outputs:  # output buffers never move: bind them once
            self.context.set_tensor_address(t.name, self.buffers[t.name].data_ptr())
        if not plan.dynamic:
            for t in plan.inputs:
                self.context.set_input_shape(t.name, t.max)
        self._lock = threading.Lock()  # one execution context: one call at a time
        self._done: torch.cuda.Event | None = None  # the last call's end, on its stream

    def _bind(self, spec, x: torch.Tensor) -> torch.Tensor:
        if x.device != self.device:
            raise InvalidInputError(f"input {spec.name!r} is on {x.device}; this TensorRT stage runs on {self.device}")
        shape = tuple(x.shape)
        if len(shape) != len(spec.max) or any(not lo <= d <= hi for d, lo, hi in zip(shape, spec.min, spec.max)):
            raise InvalidInputError(f"input {spec.name!r} has shape {shape}; the plan takes {spec.min}..{spec.max}")
        if x.dtype == spec.torch_dtype and x.is_contiguous() and x.numel() > 0:
            tensor = x  # bound in place: no copy (the KV cache, the loop's latents)
        else:
            tensor = view(self.buffers[spec.name], shape)
            tensor.copy_(x)
        if spec.dynamic:
            self.context.set_input_shape(spec.name, shape)
        self.context.set_tensor_address(spec.name, tensor.data_ptr())
        return tensor

    def __call__(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.plan.inputs):
            raise InvalidInputError(f"this stage takes {[t.name for t in self.plan.inputs]}, got {len(inputs)} inputs")
        with self._lock:
            stream = torch.cuda.current_stream(self.device)
            capturing = torch.cuda.is_current_stream_capturing()
            if self._done is not None and not capturing:
                stream.wait_event(self._done)  # the previous call (maybe on another stream) is done with the buffers
            bound = [self._bind(spec, x) for spec, x in zip(self.plan.inputs, inputs)]
            outputs = [view(self.buffers[t.name], tuple(self.context.get_tensor_shape(t.name)))
                       for t in self.plan.outputs]
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise EngineBuildError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
            if not self.shared_outputs:
                outputs = [o.clone() for o in outputs]
            if not capturing:  # (a captured graph keeps its own inputs alive)
                for t in bound:  # inputs bound in place must outlive the launch on this stream
                    t.record_stream(stream)
                self._done = torch.cuda.Event()
                self._done.record(stream)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def load(stage: str, entry: StageEntry, context: RunnerContext) -> StageFn:
    if entry.engine is None or entry.buffers is None:
        raise ArtifactError(f"rebuild needed: stage {stage} has no TensorRT plan or buffer plan in its manifest entry")
    return TensorRTStage(context.directory / entry.engine, BufferPlan.from_dict(entry.buffers), context.device,
                         shared_outputs=stage in SHARED_OUTPUTS)


__all__ = ["SHARED_OUTPUTS", "TensorRTStage", "load", "require_tensorrt"]
