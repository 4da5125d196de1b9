"""TensorRT runner: a serialized TensorRT plan run on torch CUDA tensors (GPU only, behind one capability check).

`require_tensorrt()` is the capability check (the registry's: a CUDA device and `tensorrt` >= 10, every missing
piece named); builders use it too before building plans. Not runnable on this project's CPU CI.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from ...artifact import StageEntry
from ...backends import Backend
from ...errors import EngineBuildError, InvalidInputError
from . import RunnerContext, StageFn


def require_tensorrt():
    """The imported `tensorrt` module, or `BackendUnavailable` naming every missing piece."""
    Backend.TENSORRT.spec.require("cuda")
    return importlib.import_module("tensorrt")


class TensorRTRunner:
    """Runs a serialized engine (optimization profile 0) on torch CUDA tensors, on the current CUDA stream (so it
    can be captured inside a CUDA graph)."""

    def __init__(self, engine_path: str | Path):
        trt = require_tensorrt()
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise EngineBuildError(f"TensorRT cannot deserialize {engine_path} (other TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in self.input_names]
        dtypes = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT8": torch.int8,
                  "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool, "UINT8": torch.uint8,
                  "FP8": torch.float8_e4m3fn}
        to_torch = {getattr(trt.DataType, k): v for k, v in dtypes.items() if hasattr(trt.DataType, k)}
        self.dtypes = {n: to_torch[self.engine.get_tensor_dtype(n)] for n in names}

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        if set(inputs) != set(self.input_names):
            raise InvalidInputError(f"engine inputs are {self.input_names}, got {sorted(inputs)}")
        keep = []  # contiguous copies must outlive the launch
        for name in self.input_names:
            t = inputs[name]
            if not t.is_cuda or t.dtype != self.dtypes[name]:
                raise InvalidInputError(
                    f"input {name!r} must be a CUDA {self.dtypes[name]} tensor, got {t.device} {t.dtype}"
                )
            t = t.contiguous()
            keep.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outputs = {}
        for name in self.output_names:
            out = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self.dtypes[name], device="cuda")
            self.context.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise EngineBuildError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        return outputs


def load(stage: str, entry: StageEntry, context: RunnerContext) -> StageFn:
    runner = TensorRTRunner(context.directory / entry.engine)

    def run(*inputs: torch.Tensor):
        feeds = {name: x.to(runner.dtypes[name]) for name, x in zip(runner.input_names, inputs)}
        outputs = runner(**feeds)
        ordered = tuple(outputs[name] for name in runner.output_names)
        return ordered[0] if len(ordered) == 1 else ordered
    return run
