"""`foresight::rmsnorm_modulate`: LTX-Video's adaptive-norm modulation in one pass, optionally quantized.

    y = rmsnorm(x) * (1 + scale) + shift          rmsnorm(x) = x / sqrt(mean(x^2, -1) + eps), no weight

computed in fp32 and rounded once to x's dtype, or, with `quant_scale` (a one-element fp32 tensor) and
`quant_dtype` (torch.int8 / torch.float8_e4m3fn), quantized for the next GEMM's input with one per-tensor scale:
`q = saturate(round_half_even(y / quant_scale))` ([-128, 127] for int8, [-448, 448] for e4m3fn: ONNX
QuantizeLinear's rule and `builders/fp8.py`'s), so a quantized Linear reads its input once. x: [B, S, D] fp32 or
bf16; scale, shift: same dtype, broadcastable to x ([B|1, S|1, D], any strides, unit stride over D).

Implementations: `reference` (plain PyTorch, the truth in tests), the native CPU kernel (csrc/rmsnorm_modulate.cpp:
AVX-512 or scalar), Triton on CUDA (`modulation_triton.py`; the compiled CUDA kernel where Triton is absent),
a fake for torch.compile / torch.export, and an ONNX translation (standard ops; QuantizeLinear when quantized).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import KernelError
from . import _native

QUANT_DTYPES = (torch.int8, torch.float8_e4m3fn)
E4M3_MAX = 448.0


def _check(x: Tensor, scale: Tensor, shift: Tensor, quant_scale: Tensor | None, quant_dtype: torch.dtype | None):
    if x.dim() != 3 or x.dtype not in (torch.float32, torch.bfloat16):
        raise KernelError(f"rmsnorm_modulate: x must be [B, S, D] float32 or bfloat16, got {tuple(x.shape)} {x.dtype}")
    for name, t in (("scale", scale), ("shift", shift)):
        if t.dtype != x.dtype:
            raise KernelError(f"rmsnorm_modulate: {name} dtype {t.dtype} differs from x's {x.dtype}")
        try:
            if torch.broadcast_shapes(t.shape, x.shape) != x.shape:
                raise RuntimeError
        except RuntimeError:
            raise KernelError(f"rmsnorm_modulate: {name} {tuple(t.shape)} does not broadcast to x "
                              f"{tuple(x.shape)}") from None
    if (quant_scale is None) != (quant_dtype is None):
        raise KernelError("rmsnorm_modulate: give quant_scale and quant_dtype together (or neither)")
    if quant_dtype is not None and quant_dtype not in QUANT_DTYPES:
        raise KernelError(f"rmsnorm_modulate: quant_dtype must be one of {QUANT_DTYPES}, got {quant_dtype}")
    if quant_scale is not None and quant_scale.numel() != 1:
        raise KernelError(f"rmsnorm_modulate: quant_scale must hold one value, got shape {tuple(quant_scale.shape)}")


def quantize(y: Tensor, quant_scale: Tensor, quant_dtype: torch.dtype) -> Tensor:
    """Per-tensor symmetric quantization of fp32 `y`: saturated, ties to even."""
    q = y / quant_scale.float()
    if quant_dtype == torch.int8:
        return torch.round(q).clamp(-128, 127).to(torch.int8)
    return q.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def reference(x: Tensor, scale: Tensor, shift: Tensor, eps: float, quant_scale: Tensor | None = None,
              quant_dtype: torch.dtype | None = None) -> Tensor:
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * (1 + scale.float()) + shift.float()
    return y.to(x.dtype) if quant_dtype is None else quantize(y, quant_scale, quant_dtype)


@torch.library.custom_op("foresight::rmsnorm_modulate", mutates_args=())
def rmsnorm_modulate(x: Tensor, scale: Tensor, shift: Tensor, eps: float, quant_scale: Tensor | None = None,
                     quant_dtype: torch.dtype | None = None) -> Tensor:
    """rmsnorm(x) * (1 + scale) + shift, in x's dtype or quantized (see the module docstring)."""
    _check(x, scale, shift, quant_scale, quant_dtype)
    return reference(x, scale, shift, eps, quant_scale, quant_dtype)


@rmsnorm_modulate.register_fake
def _fake(x, scale, shift, eps, quant_scale=None, quant_dtype=None):
    _check(x, scale, shift, quant_scale, quant_dtype)
    return x.new_empty(x.shape, dtype=quant_dtype or x.dtype)


def _strided(t: Tensor, shape: torch.Size) -> tuple[Tensor, int, int]:
    """`t` broadcast to [B, S, D] with unit stride over D: (tensor, batch stride, token stride), 0 = broadcast."""
    t = t.expand(shape)
    if t.stride(2) != 1:
        t = t.contiguous()
    return t, t.stride(0), t.stride(1)


@rmsnorm_modulate.register_kernel("cpu")
def _cpu(x, scale, shift, eps, quant_scale=None, quant_dtype=None):
    _check(x, scale, shift, quant_scale, quant_dtype)
    lib = _native.cpu_library()
    if lib is None:
        return reference(x, scale, shift, eps, quant_scale, quant_dtype)
    x = x.contiguous()
    (sc, sc_b, sc_s), (sh, sh_b, sh_s) = _strided(scale, x.shape), _strided(shift, x.shape)
    out = torch.empty(x.shape, dtype=quant_dtype or x.dtype)
    b, s, d = x.shape
    qscale = float(quant_scale) if quant_scale is not None else 1.0
    _native.check(lib.fk_rmsnorm_modulate(_native.DTYPE_CODES[x.dtype], x.data_ptr(), sc.data_ptr(), sh.data_ptr(),
                                          b, s, d, sc_b, sc_s, sh_b, sh_s, eps, _native.DTYPE_CODES[out.dtype],
                                          qscale, out.data_ptr(), _native.threads()), "rmsnorm_modulate")
    return out


@rmsnorm_modulate.register_kernel("cuda")
def _cuda(x, scale, shift, eps, quant_scale=None, quant_dtype=None):
    _check(x, scale, shift, quant_scale, quant_dtype)
    x = x.contiguous()
    (sc, sc_b, sc_s), (sh, sh_b, sh_s) = _strided(scale, x.shape), _strided(shift, x.shape)
    out = torch.empty(x.shape, dtype=quant_dtype or x.dtype, device=x.device)
    qs = quant_scale.float().reshape(1) if quant_scale is not None else None
    try:
        from .modulation_triton import launch
    except ImportError:
        lib = _native.cuda_library()
        if lib is None:
            return reference(x, scale, shift, eps, quant_scale, quant_dtype)
        b, s, d = x.shape
        _native.check(lib.fk_cuda_rmsnorm_modulate(
            _native.DTYPE_CODES[x.dtype], x.data_ptr(), sc.data_ptr(), sh.data_ptr(), b, s, d, sc_b, sc_s, sh_b, sh_s,
            eps, _native.DTYPE_CODES[out.dtype], _native.ptr(qs), out.data_ptr(),
            torch.cuda.current_stream(x.device).cuda_stream), "cuda rmsnorm_modulate")
        return out
    launch(x, sc, sh, eps, qs, out)
    return out


def onnx_translation(x, scale, shift, eps: float, quant_scale=None, quant_dtype=None):
    """Standard ONNX ops (opset 20): the norm in float32, then a Cast back or a saturating QuantizeLinear."""
    import numpy as np
    import onnx_ir as ir
    from onnxscript import opset20 as op
    xf = op.Cast(x, to=ir.DataType.FLOAT)
    ms = op.ReduceMean(op.Mul(xf, xf), op.Constant(value_ints=[-1]), keepdims=1)
    norm = op.Div(xf, op.Sqrt(op.Add(ms, op.Constant(value_float=eps))))
    one = op.Constant(value_float=1.0)
    y = op.Add(op.Mul(norm, op.Add(op.Cast(scale, to=ir.DataType.FLOAT), one)), op.Cast(shift, to=ir.DataType.FLOAT))
    if quant_dtype is None:
        return op.Cast(y, to=x.dtype)
    int8 = quant_dtype in (torch.int8, ir.DataType.INT8)  # the exporter hands over the ONNX type
    zero = op.Constant(value=ir.tensor(np.zeros((), dtype=np.int8)) if int8 else
                       ir.tensor(np.zeros((), dtype=np.uint8), dtype=ir.DataType.FLOAT8E4M3FN))
    scalar = op.Constant(value=ir.tensor(np.zeros((0,), dtype=np.int64)))  # reshape target: a 0-d scale
    return op.QuantizeLinear(y, op.Cast(op.Reshape(quant_scale, scalar), to=ir.DataType.FLOAT), zero, saturate=1)
