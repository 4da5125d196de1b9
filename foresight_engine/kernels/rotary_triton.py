"""Triton kernel of `foresight::rmsnorm_rope` (GPU; tested on the CPU under TRITON_INTERPRET=1).

One program per token: q's and k's rows [D] as even/odd halves, the compact rotary angles loaded once for both.
"""
from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _norm_rope_row(x_ptr, w_ptr, out_ptr, c, s, row, D, eps, pairs, m):
    even = tl.load(x_ptr + row * D + 2 * pairs, mask=m, other=0.0).to(tl.float32)
    odd = tl.load(x_ptr + row * D + 2 * pairs + 1, mask=m, other=0.0).to(tl.float32)
    inv = 1.0 / tl.sqrt((tl.sum(even * even, axis=0) + tl.sum(odd * odd, axis=0)) / D + eps)
    even = even * inv * tl.load(w_ptr + 2 * pairs, mask=m, other=0.0).to(tl.float32)
    odd = odd * inv * tl.load(w_ptr + 2 * pairs + 1, mask=m, other=0.0).to(tl.float32)
    ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + row * D + 2 * pairs, (even * c - odd * s).to(ty), mask=m)
    tl.store(out_ptr + row * D + 2 * pairs + 1, (odd * c + even * s).to(ty), mask=m)


@triton.jit
def _rmsnorm_rope(q_ptr, k_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, q_out_ptr, k_out_ptr, cs_b, S, D, eps,
                  BLOCK_P: tl.constexpr):
    row = tl.program_id(0)
    pairs = tl.arange(0, BLOCK_P)
    m = pairs < D // 2
    co = (row // S) * cs_b + (row % S) * (D // 2)
    c = tl.load(cos_ptr + co + pairs, mask=m, other=0.0)
    s = tl.load(sin_ptr + co + pairs, mask=m, other=0.0)
    _norm_rope_row(q_ptr, qw_ptr, q_out_ptr, c, s, row, D, eps, pairs, m)
    _norm_rope_row(k_ptr, kw_ptr, k_out_ptr, c, s, row, D, eps, pairs, m)


def launch(q: Tensor, k: Tensor, q_weight: Tensor, k_weight: Tensor, cos: Tensor, sin: Tensor, cs_b: int, eps: float,
           q_out: Tensor, k_out: Tensor) -> None:
    """q, k, outputs: contiguous [B, S, D]; cos, sin: contiguous [S, D/2] per batch element (batch stride cs_b)."""
    b, s, d = q.shape
    _rmsnorm_rope[(b * s,)](q, k, q_weight, k_weight, cos, sin, q_out, k_out, cs_b, s, d, eps,
                            BLOCK_P=triton.next_power_of_2(d // 2))
