"""FP8 attention and an FP8 KV cache: options of an FP8 build, measured by the accuracy gate like everything else.

Both transformers compute attention with `F.scaled_dot_product_attention` (the backbone's own attention on the KV
cache; diffusers' LTX processor). A `TorchFunctionMode` intercepts those calls inside a stage's forward, numbered in
call order (the stages have fixed structure, so call i is the same attention in calibration, simulation and
export):
- `record_attention(module, batches)` records, per call, the max |q|, |k| and |v| over the calibration set;
- `Fp8AttentionStage(module, scales, kv_cache=, attention=)` runs the stage with the attention's inputs quantized
  to float8 e4m3 (per-tensor scale amax / 448): `kv_cache` quantizes the keys and values attention reads (what an
  FP8 KV cache stores); `attention` also the queries and the softmax probabilities (fixed scale 1 / 448), computing
  the attention as two matmuls around a softmax, the pattern TensorRT fuses into its FP8 attention kernels.

The quantize-dequantize is one custom op, `foresight::fp8_qdq(x, scale)`: on the CPU it simulates e4m3 exactly as
`fp8.quantize_dequantize` does, and its ONNX translation is QuantizeLinear -> DequantizeLinear (float8e4m3fn zero
point, saturate=1), so the exported graph carries the real Q/DQ pairs TensorRT builds from (strongly typed).

What it is not: the runtime's `KVCache` keeps its 16-bit buffers; `kv_cache` reproduces the accuracy of an FP8
cache, not its halved bytes (an FP8 buffer with its scale is the follow-up).
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..errors import ArtifactError, CalibrationError
from ..video_io import atomic_output
from .fp8 import E4M3_MAX, _run, fp8_scale, quantize_dequantize

FORMAT = "foresight-fp8-attention/1"
PROBABILITY_SCALE = 1.0 / E4M3_MAX  # softmax outputs lie in [0, 1]


@torch.library.custom_op("foresight::fp8_qdq", mutates_args=())
def fp8_qdq(x: torch.Tensor, scale: float) -> torch.Tensor:
    """`x` rounded through float8 e4m3 at per-tensor `scale` (same dtype out)."""
    return quantize_dequantize(x, scale)


@fp8_qdq.register_fake
def _fake(x: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.empty_like(x)


def onnx_translation(x, scale: float):
    """`fp8_qdq` in ONNX: QuantizeLinear (saturating) then DequantizeLinear, float8e4m3fn zero point."""
    import ml_dtypes
    import onnx_ir as ir
    from onnxscript import opset20 as op
    s = op.CastLike(op.Constant(value_float=scale), x)  # QuantizeLinear takes the scale in x's type
    zero = op.Constant(value=ir.tensor(np.array(0, dtype=ml_dtypes.float8_e4m3fn)))
    return op.DequantizeLinear(op.QuantizeLinear(x, s, zero, saturate=1), s, zero)


CUSTOM_TRANSLATIONS = {torch.ops.foresight.fp8_qdq.default: onnx_translation}


@dataclass(frozen=True)
class AttentionScales:
    """Per attention call (in call order): the max |q|, |k|, |v| seen in calibration."""

    amax: Mapping[int, tuple[float, float, float]]

    def __post_init__(self) -> None:
        clean = {}
        for index, values in sorted(self.amax.items()):
            values = tuple(float(np.float32(v)) for v in values)
            if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values):
                raise CalibrationError(f"attention call {index}: amax must be three finite values >= 0, got {values}")
            clean[int(index)] = values
        object.__setattr__(self, "amax", MappingProxyType(clean))

    def __len__(self) -> int:
        return len(self.amax)

    def scales(self, index: int) -> tuple[float, float, float]:
        if index not in self.amax:
            raise CalibrationError(f"attention call {index} was never seen in calibration ({len(self)} calls were): "
                                   "the stage's structure changed since it was calibrated")
        return tuple(fp8_scale(a) for a in self.amax[index])  # type: ignore[return-value]

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps({"format": FORMAT, "amax": {str(i): list(v) for i, v in self.amax.items()}}))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "AttentionScales":
        try:
            doc = json.loads(Path(path).read_text())
            if doc.get("format") != FORMAT:
                raise ValueError(f"format {doc.get('format')!r}")
            return cls({int(i): tuple(v) for i, v in doc["amax"].items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ArtifactError(f"rebuild needed: cannot read FP8 attention scales {path}: {exc}") from None


def _sdpa_arguments(args: tuple, kwargs: dict) -> dict:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    bound = dict(zip(names, args)) | kwargs
    return {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False} | bound


class _Recorder(TorchFunctionMode):
    def __init__(self, amax: dict[int, list[float]]) -> None:
        super().__init__()
        self.amax, self.calls = amax, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            a = _sdpa_arguments(args, kwargs)
            seen = [float(t.detach().abs().amax()) if t.numel() else 0.0 for t in (a["query"], a["key"], a["value"])]
            old = self.amax.setdefault(self.calls, [0.0, 0.0, 0.0])
            self.amax[self.calls] = [max(x, y) for x, y in zip(old, seen)]
            self.calls += 1
        return func(*args, **kwargs)


def record_attention(module: nn.Module, batches: Iterable) -> AttentionScales:
    """Run `module` on every batch and record each attention call's max |q|, |k|, |v| (max over batches)."""
    amax: dict[int, list[float]] = {}
    with torch.no_grad():
        for batch in batches:
            with _Recorder(amax):
                _run(module, batch)
    if not amax:
        raise CalibrationError(f"{type(module).__name__} made no scaled_dot_product_attention call to calibrate")
    return AttentionScales({i: tuple(v) for i, v in amax.items()})


class _Quantized(TorchFunctionMode):
    def __init__(self, scales: AttentionScales, kv_cache: bool, attention: bool) -> None:
        super().__init__()
        self.scales, self.kv_cache, self.attention, self.calls = scales, kv_cache, attention, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        a = _sdpa_arguments(args, kwargs)
        q_scale, k_scale, v_scale = self.scales.scales(self.calls)
        self.calls += 1
        q, k, v = a["query"], a["key"], a["value"]
        if self.kv_cache or self.attention:
            k, v = fp8_qdq(k, k_scale), fp8_qdq(v, v_scale)
        if not self.attention:
            return func(q, k, v, attn_mask=a["attn_mask"], dropout_p=a["dropout_p"], is_causal=a["is_causal"],
                        scale=a["scale"], enable_gqa=a["enable_gqa"])
        return _fp8_attention(fp8_qdq(q, q_scale), k, v, a)


def _fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: dict) -> torch.Tensor:
    """softmax(q k^T * scale + mask) quantized to e4m3, times v: [B, H, S, d] (keys/values [B, H_kv, T, d])."""
    if a["dropout_p"] or a["is_causal"]:
        raise CalibrationError("FP8 attention supports the stages' attention only (no dropout, explicit masks)")
    if a["enable_gqa"] and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
    scale = a["scale"] if a["scale"] is not None else q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-2, -1)).float() * scale  # [B, H, S, T]
    mask = a["attn_mask"]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    probabilities = fp8_qdq(scores.softmax(-1), PROBABILITY_SCALE).to(v.dtype)
    return torch.matmul(probabilities, v)


class Fp8AttentionStage(nn.Module):
    """A stage wrapper whose attention runs in FP8 (see the module docstring); same inputs and outputs."""

    def __init__(self, stage: nn.Module, scales: AttentionScales, *, kv_cache: bool, attention: bool):
        super().__init__()
        if not (kv_cache or attention):
            raise CalibrationError("Fp8AttentionStage needs kv_cache=True or attention=True")
        self.stage, self.scales = stage, scales
        self.kv_cache, self.attention = kv_cache, attention
        self.train(stage.training)

    def forward(self, *inputs: torch.Tensor):
        mode = _Quantized(self.scales, self.kv_cache, self.attention)
        with mode:
            out = self.stage(*inputs)
        if mode.calls != len(self.scales):
            raise CalibrationError(f"the stage made {mode.calls} attention calls, calibration saw {len(self.scales)}")
        return out


__all__ = ["AttentionScales", "CUSTOM_TRANSLATIONS", "Fp8AttentionStage", "PROBABILITY_SCALE", "fp8_qdq",
           "onnx_translation", "record_attention"]
