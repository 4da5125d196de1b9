"""`foresight::rmsnorm_rope`: LTX-Video's query/key RMSNorm (across heads, with weight) + rotary embedding, fused.

    y = rmsnorm(x) * weight                     over the last dim D (all heads), eps as given
    out[2p] = y[2p] cos[p] - y[2p+1] sin[p]     out[2p+1] = y[2p+1] cos[p] + y[2p] sin[p]

for q and k of the same tokens in one call, computed in fp32 and rounded once to x's dtype. The rotary tables are
*compact*: fp32 [B|1, S, D/2], one angle per pair (`compact_rope` makes them from diffusers' interleaved [B, S, D]
tables, whose pairs repeat every value): a quarter of the bytes the eager path reads per tensor, read once for q
and k together. q, k: [B, S, D] fp32 or bf16, D even; weights [D] in the same dtype.

Implementations: `reference` (plain PyTorch), native CPU (csrc/rmsnorm_rope.cpp), Triton on CUDA
(`rotary_triton.py`; the compiled CUDA kernel where Triton is absent), a fake, an ONNX translation.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ..errors import KernelError
from . import _native


def compact_rope(cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """diffusers' LTX rotary tables (fp32 [B, S, D], each value repeated for its pair) -> fp32 [B, S, D/2]."""
    if cos.shape != sin.shape or cos.shape[-1] % 2:
        raise KernelError(f"compact_rope: cos {tuple(cos.shape)} and sin {tuple(sin.shape)} must match, last dim even")
    return cos[..., ::2].float().contiguous(), sin[..., ::2].float().contiguous()


def _check(q: Tensor, k: Tensor, q_weight: Tensor, k_weight: Tensor, cos: Tensor, sin: Tensor) -> None:
    if q.dim() != 3 or q.dtype not in (torch.float32, torch.bfloat16) or q.shape[-1] % 2:
        raise KernelError(f"rmsnorm_rope: q must be [B, S, D] float32/bfloat16 with D even, got {tuple(q.shape)} "
                          f"{q.dtype}")
    if k.shape != q.shape or k.dtype != q.dtype:
        raise KernelError(f"rmsnorm_rope: k {tuple(k.shape)} {k.dtype} must match q {tuple(q.shape)} {q.dtype}")
    b, s, d = q.shape
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w.shape != (d,) or w.dtype != q.dtype:
            raise KernelError(f"rmsnorm_rope: {name} must be [{d}] {q.dtype}, got {tuple(w.shape)} {w.dtype}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dim() != 3 or t.shape[0] not in (1, b) or t.shape[1:] != (s, d // 2) or t.dtype != torch.float32:
            raise KernelError(f"rmsnorm_rope: {name} must be float32 [1 or {b}, {s}, {d // 2}] (compact_rope), got "
                              f"{tuple(t.shape)} {t.dtype}")


def _rope(y: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    even, odd = y.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).flatten(-2)


def reference(q: Tensor, k: Tensor, q_weight: Tensor, k_weight: Tensor, cos: Tensor, sin: Tensor,
              eps: float) -> tuple[Tensor, Tensor]:
    d = q.shape[-1]
    return tuple(_rope(F.rms_norm(x.float(), (d,), w.float(), eps), cos, sin).to(x.dtype)
                 for x, w in ((q, q_weight), (k, k_weight)))


@torch.library.custom_op("foresight::rmsnorm_rope", mutates_args=())
def rmsnorm_rope(q: Tensor, k: Tensor, q_weight: Tensor, k_weight: Tensor, cos: Tensor, sin: Tensor,
                 eps: float) -> tuple[Tensor, Tensor]:
    """(rope(rmsnorm(q) * q_weight), rope(rmsnorm(k) * k_weight)); see the module docstring."""
    _check(q, k, q_weight, k_weight, cos, sin)
    return reference(q, k, q_weight, k_weight, cos, sin, eps)


@rmsnorm_rope.register_fake
def _fake(q, k, q_weight, k_weight, cos, sin, eps):
    _check(q, k, q_weight, k_weight, cos, sin)
    return torch.empty_like(q, memory_format=torch.contiguous_format), \
        torch.empty_like(k, memory_format=torch.contiguous_format)


def _table(t: Tensor) -> tuple[Tensor, int]:
    """(contiguous table, batch stride): a table shared by the batch has stride 0."""
    if t.shape[0] == 1:
        return t[0].contiguous(), 0
    t = t.contiguous()
    return t, t.stride(0)


@rmsnorm_rope.register_kernel("cpu")
def _cpu(q, k, q_weight, k_weight, cos, sin, eps):
    _check(q, k, q_weight, k_weight, cos, sin)
    lib = _native.cpu_library()
    if lib is None:
        return reference(q, k, q_weight, k_weight, cos, sin, eps)
    q, k, qw, kw = q.contiguous(), k.contiguous(), q_weight.contiguous(), k_weight.contiguous()
    (c, cs_b), (s, _) = _table(cos), _table(sin)
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)
    b, n, d = q.shape
    _native.check(lib.fk_rmsnorm_rope(_native.DTYPE_CODES[q.dtype], q.data_ptr(), k.data_ptr(), qw.data_ptr(),
                                      kw.data_ptr(), c.data_ptr(), s.data_ptr(), cs_b, b, n, d, eps, q_out.data_ptr(),
                                      k_out.data_ptr(), _native.threads()), "rmsnorm_rope")
    return q_out, k_out


@rmsnorm_rope.register_kernel("cuda")
def _cuda(q, k, q_weight, k_weight, cos, sin, eps):
    _check(q, k, q_weight, k_weight, cos, sin)
    q, k, qw, kw = q.contiguous(), k.contiguous(), q_weight.contiguous(), k_weight.contiguous()
    (c, cs_b), (s, _) = _table(cos), _table(sin)
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)
    try:
        from .rotary_triton import launch
    except ImportError:
        lib = _native.cuda_library()
        if lib is None:
            return reference(q, k, q_weight, k_weight, cos, sin, eps)
        b, n, d = q.shape
        _native.check(lib.fk_cuda_rmsnorm_rope(
            _native.DTYPE_CODES[q.dtype], q.data_ptr(), k.data_ptr(), qw.data_ptr(), kw.data_ptr(), c.data_ptr(),
            s.data_ptr(), cs_b, b, n, d, eps, q_out.data_ptr(), k_out.data_ptr(),
            torch.cuda.current_stream(q.device).cuda_stream), "cuda rmsnorm_rope")
        return q_out, k_out
    launch(q, k, qw, kw, c, s, cs_b, eps, q_out, k_out)
    return q_out, k_out


def onnx_translation(q, k, q_weight, k_weight, cos, sin, eps: float):
    """Standard ONNX ops (opset 20): norm in float32, pairs as a trailing axis of 2, rotated, flattened back."""
    import onnx_ir as ir
    from onnxscript import opset20 as op
    f32 = ir.DataType.FLOAT
    pairs = op.Constant(value_ints=[0, 0, -1, 2])  # [B, S, D] -> [B, S, D/2, 2]
    flat = op.Shape(q)
    c, s = op.Unsqueeze(cos, op.Constant(value_ints=[-1])), op.Unsqueeze(sin, op.Constant(value_ints=[-1]))

    def one(x, w):
        xf = op.Cast(x, to=f32)
        ms = op.ReduceMean(op.Mul(xf, xf), op.Constant(value_ints=[-1]), keepdims=1)
        y = op.Mul(op.Div(xf, op.Sqrt(op.Add(ms, op.Constant(value_float=eps)))), op.Cast(w, to=f32))
        even, odd = op.Split(op.Reshape(y, pairs), num_outputs=2, axis=-1)  # [B, S, D/2, 1] each
        out = op.Concat(op.Sub(op.Mul(even, c), op.Mul(odd, s)), op.Add(op.Mul(odd, c), op.Mul(even, s)), axis=-1)
        return op.Cast(op.Reshape(out, flat), to=x.dtype)

    return one(q, q_weight), one(k, k_weight)
