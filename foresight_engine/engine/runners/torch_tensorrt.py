"""Torch-TensorRT runner: a stage compiled by Torch-TensorRT (`builders/torch_tensorrt.py`), reloaded with
`torch_tensorrt.load` and called like the eager stage wrapper on torch CUDA tensors. Its TensorRT engines run on
the current CUDA stream, so the engine's whole-loop CUDA graph captures its calls like an eager module's. GPU only,
behind the registry's capability check (a CUDA device, `torch_tensorrt`, `tensorrt`, ModelOpt)."""
from __future__ import annotations

import importlib
from pathlib import Path

import torch

from ...artifact import StageEntry
from ...backends import Backend
from ...errors import ArtifactError
from . import RunnerContext, StageFn
from .buffers import BufferPlan


def load_program(path: Path, plan: BufferPlan) -> StageFn:
    """The compiled program at `path` as a stage function (inputs cast to the dtypes it was compiled for)."""
    Backend.TORCH_TENSORRT.spec.require("cuda")
    torch_tensorrt = importlib.import_module("torch_tensorrt")
    module = torch_tensorrt.load(str(path)).module()
    dtypes = [t.torch_dtype for t in plan.inputs]

    def run(*inputs: torch.Tensor):
        return module(*(x.to(dtype).contiguous() for x, dtype in zip(inputs, dtypes)))
    return run


def load(stage: str, entry: StageEntry, context: RunnerContext) -> StageFn:
    if entry.engine is None or entry.buffers is None:
        raise ArtifactError(f"rebuild needed: stage {stage} has no Torch-TensorRT program or buffer plan in its "
                            "manifest entry")
    return load_program(context.directory / entry.engine, BufferPlan.from_dict(entry.buffers))


__all__ = ["load", "load_program"]
