"""ONNX Runtime runner: an exported stage graph called like the stage wrapper it was exported from."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...artifact import StageEntry
from ...errors import InvalidInputError
from . import RunnerContext, StageFn

# ONNX Runtime's declared input types -> the torch dtype to feed
_DTYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(double)": torch.float64,
           "tensor(int64)": torch.int64, "tensor(int32)": torch.int32, "tensor(bool)": torch.bool}


def providers(device_type: str) -> list[str]:
    """ONNX Runtime providers to use: CUDA first where present and the engine runs on a GPU."""
    import onnxruntime as ort
    wanted = ["CUDAExecutionProvider"] if device_type == "cuda" else []
    return [p for p in wanted if p in ort.get_available_providers()] + ["CPUExecutionProvider"]


class OnnxStage:
    """An ONNX Runtime session: tensors in (cast to the graph's declared types), tensors out on `device`."""

    def __init__(self, path: Path, device: torch.device | str = "cpu", quantized: bool = False, threads: int = 0):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        if quantized:
            # ORT's extended optimizations fuse/move float8 Q/DQ into ops with no float8 CPU kernel
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.device = torch.device(device)
        self.session = ort.InferenceSession(str(path), options, providers=providers(self.device.type))
        self.inputs = [(i.name, _DTYPES.get(i.type)) for i in self.session.get_inputs()]

    def __call__(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.inputs):
            raise InvalidInputError(f"ONNX stage takes {[n for n, _ in self.inputs]}, got {len(inputs)} input(s)")
        # host copies: ONNX Runtime takes numpy here (IO binding of device buffers is a follow-up)
        feeds = {name: x.detach().to(dtype or x.dtype).cpu().contiguous().numpy()
                 for (name, dtype), x in zip(self.inputs, inputs)}
        outputs = tuple(torch.from_numpy(np.ascontiguousarray(o)).to(self.device)
                        for o in self.session.run(None, feeds))
        return outputs[0] if len(outputs) == 1 else outputs


def load(stage: str, entry: StageEntry, context: RunnerContext) -> StageFn:
    return OnnxStage(context.directory / entry.file, context.device, quantized=entry.fp8_scales is not None)
