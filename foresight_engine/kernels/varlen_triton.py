"""Triton kernel of `foresight::varlen_attention` (GPU without flash-attn; tested on the CPU under
TRITON_INTERPRET=1): flash-attention forward with an online softmax, one program per (query block, head, sequence).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _varlen_attention(q_ptr, k_ptr, v_ptr, out_ptr, cu_ptr, scale, q_st, q_sh, k_st, k_sh, v_st, v_sh, HEADS, D,
                      IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    block, h, seq = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    start = tl.load(cu_ptr + seq)
    length = tl.load(cu_ptr + seq + 1) - start
    if block * BLOCK_M < length:
        rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, BLOCK_D)
        keys = tl.arange(0, BLOCK_N)
        row_ok = rows < length
        col_ok = cols < D
        q = tl.load(q_ptr + (start + rows)[:, None] * q_st + h * q_sh + cols[None, :],
                    mask=row_ok[:, None] & col_ok[None, :], other=0.0)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for n0 in range(0, length, BLOCK_N):
            key_ok = (n0 + keys) < length
            kt = tl.load(k_ptr + (start + n0 + keys)[None, :] * k_st + h * k_sh + cols[:, None],
                         mask=key_ok[None, :] & col_ok[:, None], other=0.0)  # [BLOCK_D, BLOCK_N]
            if IEEE:
                s = tl.dot(q, kt, input_precision="ieee") * scale
            else:
                s = tl.dot(q, kt) * scale
            s = tl.where(key_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_ptr + (start + n0 + keys)[:, None] * v_st + h * v_sh + cols[None, :],
                        mask=key_ok[:, None] & col_ok[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(out_ptr + ((start + rows)[:, None] * HEADS + h) * D + cols[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def launch(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int, scale: float, out: Tensor,
           block_m: int = 64, block_n: int = 64) -> None:
    """q, k, v: [T, H, d] with unit stride over d; cu_seqlens int32 [N + 1]; out: contiguous [T, H, d]."""
    heads, d = q.shape[1], q.shape[2]
    grid = (triton.cdiv(max_seqlen, block_m), heads, cu_seqlens.numel() - 1)
    _varlen_attention[grid](q, k, v, out, cu_seqlens, scale, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                            v.stride(0), v.stride(1), heads, d, IEEE=q.dtype == torch.float32, BLOCK_M=block_m,
                            BLOCK_N=block_n, BLOCK_D=max(16, triton.next_power_of_2(d)))
