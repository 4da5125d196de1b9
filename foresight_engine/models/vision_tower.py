"""Vision tower: Qwen2.5-VL's vision transformer (frozen). Patches in, merged visual tokens out.

The tower's window layout depends on the VALUES of `grid_thw` (how many windows, where they start), which neither
torch.export nor TensorRT nor a CUDA graph can follow. So, as TensorRT-LLM's multimodal builder does for Qwen2-VL,
everything that depends on the grid is computed on the host, once per image grid (`VisionLayout.of`): the window
order of the merged tokens and its inverse, the cumulative sequence lengths of the windows and of the frames, and
the rotary table (cos/sin, already in window order). The forward then has fixed shapes for one image grid: it
exports, builds and graphs like every other stage, and the engine runs it once per image (windows and full
attention never cross images, so per-image calls equal the batched one).

Attention inside a block goes through ONE function, `varlen_attention(q, k, v, cu_seqlens, max_seqlen)`
(flash-attn's varlen convention): the custom op `foresight::varlen_attention` where it is wired
(`kernels/wiring.py`; native CPU kernel, flash-attn / Triton on CUDA; its ONNX translation is standard ops), else the
same math in fixed shapes here (a padded batch with a key-padding mask).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

from .. import kernels
from ..config import ModelConfig, VisionConfig
from ..kernels import varlen as varlen_op

ROPE_THETA = 10000.0  # Qwen2.5-VL's vision rotary base


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     max_seqlen: int) -> torch.Tensor:
    """Attention within each packed sequence, nothing across them: q, k, v [T, H, d]; sequence i is the tokens
    [cu_seqlens[i], cu_seqlens[i + 1]); `max_seqlen` (a Python int, part of the shape) >= every length. -> [T, H, d].
    Scale d ** -0.5, no causality (the vision tower's attention).

    The custom op where wired (not under autograd: it has no backward). Otherwise fixed shapes, no host read: the
    sequences are gathered into a padded batch [S, H, max_seqlen, d], attended with a key-padding mask, and each
    token's row is gathered back.
    """
    if kernels.wired("varlen_attention", q.device) and not (torch.is_grad_enabled() and q.requires_grad):
        return varlen_op.varlen_attention(q, k, v, cu_seqlens, max_seqlen)
    total = q.shape[0]
    cu = cu_seqlens.long()
    starts, lengths = cu[:-1], cu[1:] - cu[:-1]  # [S]
    offsets = torch.arange(max_seqlen, device=q.device)  # [M]
    present = offsets < lengths[:, None]  # [S, M]: which padded slots hold a token
    rows = torch.where(present, starts[:, None] + offsets, 0)  # [S, M] token index (padding reads token 0)
    qs, ks, vs = (x[rows].permute(0, 2, 1, 3) for x in (q, k, v))  # [S, H, M, d]
    out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=present[:, None, None, :])  # [S, H, M, d]
    packed = out.permute(0, 2, 1, 3).reshape(-1, q.shape[1], q.shape[2])  # [S * M, H, d]
    token = torch.arange(total, device=q.device)
    sequence = (token[:, None] >= cu[None, 1:]).sum(1)  # [T]: the sequence each token is in
    return packed[sequence * max_seqlen + token - starts[sequence]]


def image_grid(config: ModelConfig, height: int, width: int) -> tuple[int, int, int]:
    """The (t, h, w) patch grid the image processor gives one `height` x `width` image."""
    v, p = config.vision, config.processor
    h, w = smart_resize(height, width, v.patch_size * v.spatial_merge_size, p.min_pixels, p.max_pixels)
    return 1, h // v.patch_size, w // v.patch_size


@dataclass(frozen=True)
class VisionLayout:
    """Host-computed tables of one image grid (the vision stage's inputs besides the pixels)."""

    grid: tuple[int, int, int]  # (t, h, w) patches
    window_index: torch.Tensor  # [N / m^2] int64: merged tokens in window order
    reverse_index: torch.Tensor  # [N / m^2] int64: its inverse permutation (back to raster order)
    cu_window_seqlens: torch.Tensor  # [W + 1] int32: window boundaries, in patches
    cu_seqlens: torch.Tensor  # [t + 1] int32: frame boundaries (the full-attention blocks)
    cos: torch.Tensor  # [N, head_dim] float32, in window order
    sin: torch.Tensor  # [N, head_dim] float32, in window order
    max_window_seqlen: int
    max_seqlen: int

    TENSORS = ("window_index", "reverse_index", "cu_window_seqlens", "cu_seqlens", "cos", "sin")

    @staticmethod
    @functools.lru_cache(maxsize=64)
    def of(config: VisionConfig, grid: tuple[int, int, int]) -> "VisionLayout":
        """The layout of `grid` (cached: a handful of grids recur). CPU tensors; move them with `to`."""
        t, h, w = (int(x) for x in grid)
        grid_thw = torch.tensor([[t, h, w]])
        m = config.spatial_merge_size
        window_index, cu_windows = get_vision_window_index(grid_thw, spatial_merge_size=m,
                                                           window_size=config.window_size,
                                                           patch_size=config.patch_size)
        cu_windows = cu_windows.to(torch.int32)
        cu_frames = get_vision_cu_seqlens(grid_thw).to(torch.int32)
        positions = get_vision_position_ids(grid_thw, m).float()  # [N, 2] (row, column) per patch
        spatial = config.hidden_size // config.num_heads // 2
        inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, spatial, 2, dtype=torch.float) / spatial)
        angles = positions[..., None] * inv_freq  # [N, 2, d / 4]
        angles = torch.cat([angles[:, 0], angles[:, 1]], dim=-1)  # [N, d / 2]
        angles = torch.cat([angles, angles], dim=-1)  # [N, d]
        unit = m * m
        in_windows = angles.view(-1, unit, angles.shape[-1])[window_index].reshape(angles.shape)
        return VisionLayout((t, h, w), window_index, torch.argsort(window_index), cu_windows, cu_frames,
                            in_windows.cos(), in_windows.sin(), _longest(cu_windows), _longest(cu_frames))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, name) for name in self.TENSORS)

    def to(self, device: torch.device | str) -> tuple[torch.Tensor, ...]:
        """The tables on `device`, in the stage's input order."""
        return tuple(x.to(device, non_blocking=True) for x in self.tensors())

    @property
    def patches(self) -> int:
        return math.prod(self.grid)


def _longest(cu: torch.Tensor) -> int:
    return int((cu[1:] - cu[:-1]).max())


class VisionTower(nn.Module):
    """Wraps `Qwen2_5_VLModel.visual` (its submodules and weights; its own forward is not used).

    `forward(pixel_values [N, C*T*P*P], *layout tables, max_window_seqlen=, max_seqlen=)` -> one row per merged
    token, in the image's raster order: [N / merge^2, D_vlm]. One image grid per call (`VisionLayout`).
    """

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        # transformers' own forward of this tower (the peers', the planner's): attention through the op too
        kernels.use_in_vision_tower(visual)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.visual.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor, window_index: torch.Tensor, reverse_index: torch.Tensor,
                cu_window_seqlens: torch.Tensor, cu_seqlens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                *, max_window_seqlen: int, max_seqlen: int) -> torch.Tensor:
        visual = self.visual
        x = visual.patch_embed(pixel_values.to(self.dtype))  # [N, D]
        n, unit = x.shape[0], visual.spatial_merge_unit
        x = x.view(n // unit, unit, -1)[window_index].reshape(n, -1)  # window order
        for i, block in enumerate(visual.blocks):
            full = i in visual.fullatt_block_indexes
            cu, longest = (cu_seqlens, max_seqlen) if full else (cu_window_seqlens, max_window_seqlen)
            x = x + self._attention(block.attn, block.norm1(x), cos, sin, cu, longest)
            x = x + block.mlp(block.norm2(x))
        return visual.merger(x)[reverse_index]

    @staticmethod
    def _attention(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cu_seqlens: torch.Tensor,
                   max_seqlen: int) -> torch.Tensor:
        n = x.shape[0]
        q, k, v = attn.qkv(x).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)  # [N, H, d] each
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        return attn.proj(varlen_attention(q, k, v, cu_seqlens, max_seqlen).reshape(n, -1))


__all__ = ["VisionLayout", "VisionTower", "image_grid", "varlen_attention"]
