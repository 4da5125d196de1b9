"""FP8 calibration the way NVIDIA's recipes do it: NVIDIA ModelOpt (`pip install nvidia-modelopt`, in the
`[tensorrt]` extra), used where it is installed.

`calibrate(module, batches, keep_high)` runs `mtq.quantize` with ModelOpt's FP8 default config (e4m3, per-tensor
max calibration of every Linear's input and weight), restricted to `nn.Linear` layers and with the layers the
precision policy keeps high disabled (the recipes' own skip list names `lm_head` and `proj_out` too), and a forward
loop over the calibration batches; the calibrated amaxes are read back from its quantizers as `Fp8Scales`, so the
rest of the build (the Q/DQ graph, the CPU simulation, the gate) is the same whichever calibrator ran. Both
calibrators compute max |x| per tensor: the test suite checks that they agree, layer by layer, on the CPU.

Why ModelOpt's own ONNX export is not used for the graph: it goes through torch's TorchScript exporter
(`dynamo=False`, emitting `trt::TRT_FP8QuantizeLinear`), which fails here on two of the three FP8 stages
(`aten::rms_norm` in the LTX transformer at opset 19; `scaled_dot_product_attention(enable_gqa=True)` in the
backbone; measured with torch 2.14 / modelopt 0.47). The dynamo exporter plus `fp8.insert_qdq` writes standard ONNX
float8 QuantizeLinear/DequantizeLinear from ModelOpt's amaxes instead; TensorRT parses both forms alike.
"""
from __future__ import annotations

import copy
import importlib.util
import logging
from collections.abc import Iterable

import torch
from torch import nn

from ..errors import CalibrationError
from .fp8 import Fp8Scales, _run

log = logging.getLogger(__name__)


def available() -> bool:
    """Whether ModelOpt is installed (found without importing it: its import takes seconds)."""
    return importlib.util.find_spec("modelopt") is not None


def fp8_config(keep_high: Iterable[str]) -> dict:
    """ModelOpt's FP8 default config, on `nn.Linear` layers only, with the `keep_high` layers disabled."""
    import modelopt.torch.quantization as mtq
    config = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    rules = config["quant_cfg"]
    fp8 = next(r["cfg"] for r in rules if r.get("quantizer_name") == "*input_quantizer")
    config["quant_cfg"] = [
        {"quantizer_name": "*", "enable": False},
        {"quantizer_name": "*weight_quantizer", "parent_class": "nn.Linear", "cfg": fp8},
        {"quantizer_name": "*input_quantizer", "parent_class": "nn.Linear", "cfg": fp8},
        *({"quantizer_name": f"*{part}*", "enable": False} for part in keep_high),
    ]
    return config


def quantize(module: nn.Module, batches: list, keep_high: Iterable[str]) -> nn.Module:
    """A calibrated ModelOpt copy of `module` (fake-quantized FP8 Linears; `module` itself is left as it was)."""
    import modelopt.torch.quantization as mtq

    def forward_loop(model: nn.Module) -> None:
        for batch in batches:
            _run(model, batch)
    if not batches:
        raise CalibrationError("the calibration set is empty: give at least one batch")
    return mtq.quantize(copy.deepcopy(module), fp8_config(tuple(keep_high)), forward_loop)


def with_scales(module: nn.Module, scales: Fp8Scales) -> nn.Module:
    """A ModelOpt-quantized copy of `module` whose quantizers hold `scales` (the Linears absent from `scales`
    disabled): the FP8 module Torch-TensorRT compiles, whichever calibrator made the scales."""
    import modelopt.torch.quantization as mtq
    quantized = mtq.quantize(copy.deepcopy(module), fp8_config(()), forward_loop=None)
    for name, layer in quantized.named_modules():
        quantizers = getattr(layer, "input_quantizer", None), getattr(layer, "weight_quantizer", None)
        if quantizers[0] is None:
            continue
        for quantizer, amax in zip(quantizers, scales.amax.get(name, (None, None))):
            if quantizer is None:
                continue
            if amax is None:
                quantizer.disable()
            else:
                quantizer.amax = torch.tensor(amax, dtype=torch.float32)
    return quantized


def calibrate(module: nn.Module, batches: list, keep_high: Iterable[str]) -> Fp8Scales:
    """`Fp8Scales` ({layer: (input amax, weight amax)}) calibrated by ModelOpt."""
    quantized = quantize(module, batches, keep_high)
    amax = {}
    for name, layer in quantized.named_modules():
        inputs, weights = getattr(layer, "input_quantizer", None), getattr(layer, "weight_quantizer", None)
        if inputs is None or not inputs.is_enabled:
            continue
        if inputs.amax is None:  # a layer no batch reached keeps no amax: it stays unquantized (as in fp8.calibrate)
            log.warning("ModelOpt FP8 calibration: layer %s never ran and stays unquantized", name)
            continue
        amax[name] = (float(inputs.amax.float().max()), float(weights.amax.float().max()))
    if not amax:
        raise CalibrationError(f"ModelOpt found no Linear to quantize in {type(module).__name__} (after the skips)")
    return Fp8Scales(amax)


__all__ = ["available", "calibrate", "fp8_config", "quantize", "with_scales"]
