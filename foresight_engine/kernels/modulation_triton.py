"""Triton kernel of `foresight::rmsnorm_modulate` (GPU; tested on the CPU under TRITON_INTERPRET=1).

One program per row [D]: the sum of squares, then the modulated row, rounded once (or quantized). Imported only
where it runs: on CUDA, or by the interpreter tests.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _round_to_e4m3(q):
    """|q| <= 448 rounded to the nearest float8 e4m3fn value (ties to even), still fp32: the cast that follows is
    then exact, whatever rounding the hardware (or the interpreter, which drops mantissa carries) would apply."""
    bits = q.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -0x100000  # keep 3 mantissa bits
    normal = bits.to(tl.float32, bitcast=True)
    sub = ((q * 512.0 + 12582912.0) - 12582912.0) / 512.0  # below 2^-6: multiples of 2^-9
    return tl.where(tl.abs(q) < 0.015625, sub, normal)


@triton.jit
def _rmsnorm_modulate(x_ptr, scale_ptr, shift_ptr, out_ptr, qscale_ptr, S, D, scale_sb, scale_ss, shift_sb,
                      shift_ss, eps, QUANT: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0)
    b = row // S
    s = row % S
    cols = tl.arange(0, BLOCK_D)
    m = cols < D
    x = tl.load(x_ptr + row * D + cols, mask=m, other=0.0).to(tl.float32)
    inv = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps)
    sc = tl.load(scale_ptr + b * scale_sb + s * scale_ss + cols, mask=m, other=0.0).to(tl.float32)
    sh = tl.load(shift_ptr + b * shift_sb + s * shift_ss + cols, mask=m, other=0.0).to(tl.float32)
    y = x * inv * (1.0 + sc) + sh
    if QUANT == 1:  # int8
        q = y / tl.load(qscale_ptr)
        q = tl.minimum(tl.maximum(q, -128.0), 127.0)
        q = (q + 12582912.0) - 12582912.0  # + 1.5 * 2^23 - 1.5 * 2^23: round to nearest, ties to even
        tl.store(out_ptr + row * D + cols, q.to(tl.int8), mask=m)
    elif QUANT == 2:  # float8 e4m3fn, saturated
        q = _round_to_e4m3(tl.minimum(tl.maximum(y / tl.load(qscale_ptr), -448.0), 448.0))
        tl.store(out_ptr + row * D + cols, q.to(out_ptr.dtype.element_ty), mask=m)
    else:
        tl.store(out_ptr + row * D + cols, y.to(out_ptr.dtype.element_ty), mask=m)


def launch(x: Tensor, scale: Tensor, shift: Tensor, eps: float, quant_scale: Tensor | None, out: Tensor) -> None:
    """x, out: contiguous [B, S, D]; scale, shift expanded to x's shape with unit stride over D."""
    b, s, d = x.shape
    quant = 0 if quant_scale is None else (1 if out.dtype == torch.int8 else 2)
    _rmsnorm_modulate[(b * s,)](x, scale, shift, out, quant_scale if quant_scale is not None else x, s, d,
                                scale.stride(0), scale.stride(1), shift.stride(0), shift.stride(1), eps,
                                QUANT=quant, BLOCK_D=triton.next_power_of_2(d))
