"""Torch-TensorRT, the build side: each stage wrapper -> `torch.export` program (CPU, saved with
`torch.export.save` next to the graph files) -> `torch_tensorrt.dynamo.compile` with explicit typing (GPU) -> saved
with `torch_tensorrt.save` as an exported program, which the runner (`engine/runners/torch_tensorrt.py`) reloads.

Precision is the program's own (explicit typing: the weights were cast by the precision policy before export; no
`enabled_precisions`). Under FP8 the program is exported from ModelOpt's quantized copy of the stage inside
ModelOpt's `export_torch_mode()`, whose quantizers trace as the ops Torch-TensorRT converts into FP8 Q/DQ layers.
Optimization profiles come from the stage's buffer plan (min/opt/max per input, `opt` at the built request shape).
Everything before `compile_program` runs and is tested on the CPU (the saved program reloads equal to eager).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..backends import Backend
from ..engine.runners.buffers import BufferPlan
from ..models.export_spec import ExportSpec
from ..video_io import atomic_output

log = logging.getLogger(__name__)


def require_torch_tensorrt():
    """The imported `torch_tensorrt` module, or `BackendUnavailable` naming every missing piece."""
    Backend.TORCH_TENSORRT.spec.require("cuda")
    return importlib.import_module("torch_tensorrt")


def export_program(module: nn.Module, spec: ExportSpec, inputs: tuple[torch.Tensor, ...], path: Path, *,
                   modelopt: bool = False) -> torch.export.ExportedProgram:
    """`torch.export` of a stage module with the spec's dynamic axes, saved at `path` (atomically)."""
    mode: Any = contextlib.nullcontext()
    if modelopt:  # ModelOpt's quantizers trace as torch.ops.tensorrt.quantize_op in export mode
        from modelopt.torch.quantization.utils import export_torch_mode
        mode = export_torch_mode()
    with mode, torch.no_grad():
        program = torch.export.export(module, inputs, dynamic_shapes=spec.dynamic_shapes(), strict=False)
    with atomic_output(path) as tmp:
        torch.export.save(program, str(tmp))
    return program


def compile_program(program_path: Path, plan: BufferPlan, out_path: Path, options: Mapping[str, Any],
                    device: torch.device | str = "cuda") -> Path:
    """Compile a saved program with Torch-TensorRT on the GPU and save the result at `out_path`. GPU only."""
    torch_tensorrt = require_torch_tensorrt()
    program = torch.export.passes.move_to_device_pass(torch.export.load(str(program_path)), torch.device(device))
    inputs = [torch_tensorrt.Input(min_shape=t.min, opt_shape=t.opt, max_shape=t.max, dtype=t.torch_dtype)
              if t.dynamic else torch_tensorrt.Input(shape=t.max, dtype=t.torch_dtype) for t in plan.inputs]
    compiled = torch_tensorrt.dynamo.compile(program, arg_inputs=inputs, **dict(options))
    with atomic_output(out_path) as tmp:
        torch_tensorrt.save(compiled, str(tmp), output_format="exported_program", arg_inputs=inputs)
    log.info("Torch-TensorRT compiled %s -> %s", program_path.name, out_path.name)
    return out_path


__all__ = ["compile_program", "export_program", "require_torch_tensorrt"]
