"""`foresight::varlen_attention(q, k, v, cu_seqlens, max_seqlen, softmax_scale=None) -> out`: attention within
each of several packed sequences, nothing across them (flash-attn's varlen convention).

q, k, v: [T, H, d] (any token/head strides, unit stride over d); cu_seqlens: int32 [N + 1], sequence i is tokens
[cu_seqlens[i], cu_seqlens[i+1]), cu_seqlens[0] = 0 and cu_seqlens[-1] = T; max_seqlen: an int >= every length
(a shape, not data: export and CUDA graphs see no host read); out: [T, H, d] contiguous, q's dtype. No mask inside
a sequence, no causality; softmax_scale defaults to d ** -0.5.

Where it is used: Qwen2.5-VL's vision tower (windows, and one sequence per image in the full-attention blocks),
through `use_in_vision_tower`, with the window layout computed on the host (`transformers.vision_utils`) and passed
as tensors; and LTX-Video's self-attention (one sequence per batch element).

Implementations:
- `reference`: one SDPA per sequence (reads cu_seqlens on the host): the truth in tests, the CPU fallback;
- `padded`: the same math in fixed shapes (gather into [N, max_seqlen], key-padding mask, gather back): no host
  read, so it exports and graphs; the ONNX translation is this, in standard ops (TensorRT builds it natively);
- native CPU (csrc/varlen_attention.cpp: AVX512-BF16 vdpbf16ps, AVX-512 fp32, scalar);
- CUDA: flash-attn's `flash_attn_varlen_func` when installed (`pip install 'foresight-engine[flash]'`, fp16/bf16),
  else Triton (`varlen_triton.py`), else `padded`.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from ..errors import KernelError
from . import _native
from .wiring import wired

VISION_ATTENTION = "foresight_flash_varlen"  # "flash" in the name: transformers then hands over cu_seqlens


def _check(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> None:
    if q.dim() != 3 or q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise KernelError(f"varlen_attention: q must be [T, H, d] float32/bfloat16/float16, got {tuple(q.shape)} "
                          f"{q.dtype}")
    if k.shape != q.shape or v.shape != q.shape or k.dtype != q.dtype or v.dtype != q.dtype:
        raise KernelError(f"varlen_attention: q, k, v must match: {tuple(q.shape)} {q.dtype}, {tuple(k.shape)} "
                          f"{k.dtype}, {tuple(v.shape)} {v.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise KernelError(f"varlen_attention: cu_seqlens must be int32 [N + 1], got {tuple(cu_seqlens.shape)} "
                          f"{cu_seqlens.dtype}")
    if max_seqlen < 1:
        raise KernelError(f"varlen_attention: max_seqlen must be >= 1, got {max_seqlen}")


def _check_layout(bounds: list[int], total: int, max_seqlen: int) -> None:
    """The data checks a host-side implementation can afford (cu_seqlens is already on the host)."""
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    if bounds[0] != 0 or bounds[-1] != total or min(lengths, default=0) < 0:
        raise KernelError(f"varlen_attention: cu_seqlens must rise from 0 to T={total}, got {bounds}")
    if max(lengths, default=0) > max_seqlen:
        raise KernelError(f"varlen_attention: a sequence of {max(lengths)} tokens exceeds max_seqlen={max_seqlen}")


def reference(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int,
              softmax_scale: float | None = None) -> Tensor:
    bounds = cu_seqlens.tolist()
    _check_layout(bounds, q.shape[0], max_seqlen)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:  # [H, L, d] per sequence
            out[a:b] = F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1),
                                                      v[a:b].transpose(0, 1), scale=softmax_scale).transpose(0, 1)
    return out


def padded(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int,
           softmax_scale: float | None = None) -> Tensor:
    """`reference` in fixed shapes: sequences gathered into [N, H, max_seqlen, d] with a key-padding mask."""
    total, heads, d = q.shape
    cu = cu_seqlens.long()
    starts, ends = cu[:-1], cu[1:]
    index = starts[:, None] + torch.arange(max_seqlen, device=q.device)  # [N, M]
    valid = index < ends[:, None]
    index = torch.where(valid, index, 0)
    qb, kb, vb = (t[index].transpose(1, 2) for t in (q, k, v))  # [N, H, M, d]
    out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=valid[:, None, None, :], scale=softmax_scale)
    out = out.transpose(1, 2).reshape(-1, heads, d)  # [N * M, H, d]
    token = torch.arange(total, device=q.device)
    seq = (token[:, None] >= ends[None, :]).sum(1)  # sequence of each token
    return out[seq * max_seqlen + token - starts[seq]]


@torch.library.custom_op("foresight::varlen_attention", mutates_args=())
def varlen_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int,
                     softmax_scale: float | None = None) -> Tensor:
    """Attention within each packed sequence; see the module docstring."""
    _check(q, k, v, cu_seqlens, max_seqlen)
    return reference(q, k, v, cu_seqlens, max_seqlen, softmax_scale)


@varlen_attention.register_fake
def _fake(q, k, v, cu_seqlens, max_seqlen, softmax_scale=None):
    _check(q, k, v, cu_seqlens, max_seqlen)
    return q.new_empty(q.shape)


def _unit_last(t: Tensor) -> Tensor:
    return t if t.stride(2) == 1 else t.contiguous()


@varlen_attention.register_kernel("cpu")
def _cpu(q, k, v, cu_seqlens, max_seqlen, softmax_scale=None):
    _check(q, k, v, cu_seqlens, max_seqlen)
    lib = _native.cpu_library()
    if lib is None or q.dtype == torch.float16:  # the native kernel takes float32 and bfloat16
        return reference(q, k, v, cu_seqlens, max_seqlen, softmax_scale)
    cu = cu_seqlens.to(torch.int32).contiguous()
    _check_layout(cu.tolist(), q.shape[0], max_seqlen)
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    total, heads, d = q.shape
    out = torch.empty((total, heads, d), dtype=q.dtype)
    scale = softmax_scale if softmax_scale is not None else d ** -0.5
    _native.check(lib.fk_varlen_attention(_native.DTYPE_CODES[q.dtype], q.data_ptr(), k.data_ptr(), v.data_ptr(),
                                          out.data_ptr(), cu.data_ptr(), cu.numel() - 1, heads, d, q.stride(0),
                                          q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), scale,
                                          _native.threads()), "varlen_attention")
    return out


@varlen_attention.register_kernel("cuda")
def _cuda(q, k, v, cu_seqlens, max_seqlen, softmax_scale=None):
    _check(q, k, v, cu_seqlens, max_seqlen)
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    cu = cu_seqlens.to(torch.int32)
    if q.dtype != torch.float32 and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256:  # what flash-attn takes
        try:
            from flash_attn import flash_attn_varlen_func
        except ImportError:
            pass
        else:
            return flash_attn_varlen_func(q, k, v, cu, cu, max_seqlen, max_seqlen, softmax_scale=softmax_scale)
    try:
        from .varlen_triton import launch
    except ImportError:
        return padded(q, k, v, cu, max_seqlen, softmax_scale)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    launch(q, k, v, cu, max_seqlen, softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5, out)
    return out


def _vision_attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask=None, scaling=None,
                      dropout: float = 0.0, cu_seq_lens_q: Tensor | None = None, max_length_q: int | None = None,
                      **kwargs) -> tuple[Tensor, None]:
    """transformers' attention interface for Qwen2.5-VL's vision blocks: query/key/value [1, H, T, d] with
    cu_seqlens (windows, or one sequence per image) -> [1, T, H, d]. Where the op is not wired, the reference (one
    SDPA per sequence, what transformers' own SDPA path does), and where gradients are needed (the op is
    inference-only)."""
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, H, d] views
    differentiable = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))  # the op has no backward
    fn = varlen_attention if wired("varlen_attention", q.device) and not differentiable else reference
    return fn(q, k, v, cu_seq_lens_q, int(max_length_q), scaling).unsqueeze(0), None


def use_in_vision_tower(visual: torch.nn.Module) -> None:
    """Route the attention of a Qwen2.5-VL vision tower (`Qwen2_5_VisionTransformerPretrainedModel`) through
    `varlen_attention`. Its window layout can then come in as tensors (`position_ids`, `window_index`,
    `cu_window_seqlens`, `cu_seqlens` and the two max lengths as keyword arguments of its forward, computed on the
    host by `transformers.vision_utils`): no host read is left inside, so it compiles, exports and graphs."""
    from transformers import AttentionInterface
    AttentionInterface.register(VISION_ATTENTION, _vision_attention)
    visual.config._attn_implementation = VISION_ATTENTION


def flops(cu_seqlens: Tensor, heads: int, head_dim: int) -> int:
    """Model FLOPs of one call: two products per sequence, 2 * L^2 * d each, per head."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return int(4 * (lengths * lengths).sum()) * heads * head_dim


def onnx_translation(q, k, v, cu_seqlens, max_seqlen: int, softmax_scale: float | None = None):
    """`padded` in standard ONNX ops (opset 20): Gather, MatMul, Where, Softmax; no loop, no plugin."""
    import onnx_ir as ir
    from onnxscript import opset20 as op
    i64 = ir.DataType.INT64
    axis0, axis1, last = op.Constant(value_ints=[0]), op.Constant(value_ints=[1]), op.Constant(value_ints=[-1])
    cu = op.Cast(cu_seqlens, to=i64)
    starts = op.Slice(cu, op.Constant(value_ints=[0]), op.Constant(value_ints=[-1]), axis0)
    ends = op.Slice(cu, axis1, op.Constant(value_ints=[2**62]), axis0)
    index = op.Add(op.Unsqueeze(starts, axis1),
                   op.Range(op.Constant(value_int=0), op.Constant(value_int=max_seqlen), op.Constant(value_int=1)))
    valid = op.Less(index, op.Unsqueeze(ends, axis1))  # [N, M]
    index = op.Where(valid, index, op.Constant(value_int=0))
    qb, kb, vb = (op.Transpose(op.Gather(t, index, axis=0), perm=[0, 2, 1, 3]) for t in (q, k, v))  # [N, H, M, d]
    d = q.shape[-1]
    scale = softmax_scale if softmax_scale is not None else float(d) ** -0.5
    scores = op.Mul(op.Cast(op.MatMul(qb, op.Transpose(kb, perm=[0, 1, 3, 2])), to=ir.DataType.FLOAT),
                    op.Constant(value_float=scale))
    scores = op.Where(op.Unsqueeze(valid, op.Constant(value_ints=[1, 2])), scores, op.Constant(value_float=-3.0e38))
    probs = op.Cast(op.Softmax(scores, axis=-1), to=q.dtype)
    out = op.Transpose(op.MatMul(probs, vb), perm=[0, 2, 1, 3])  # [N, M, H, d]
    out = op.Reshape(out, op.Concat(op.Constant(value_ints=[-1]), op.Slice(op.Shape(q), axis1, op.Constant(
        value_ints=[3]), axis0), axis=0))  # [N * M, H, d]
    token = op.Range(op.Constant(value_int=0), op.Squeeze(op.Slice(op.Shape(q), axis0, axis1, axis0), axis0),
                     op.Constant(value_int=1))
    seq = op.ReduceSum(op.Cast(op.GreaterOrEqual(op.Unsqueeze(token, axis1), op.Unsqueeze(ends, axis0)), to=i64),
                       last, keepdims=0)
    row = op.Add(op.Mul(seq, op.Constant(value_int=max_seqlen)), op.Sub(token, op.Gather(starts, seq, axis=0)))
    return op.Gather(out, row, axis=0)
