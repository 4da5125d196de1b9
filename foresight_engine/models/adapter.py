"""Conditioning adapter: a cross-attention query adapter that turns the world latent into the video decoder's
conditioning.

It takes the place of the decoder's prompt encoder (LTX-Video's T5, HunyuanVideo-1.5's Qwen2.5-VL text states):
L learned queries attend to the Q world-latent tokens and the result is projected to the decoder's conditioning
channels. Output: [B, L, C] and an all-ones mask [B, L].

With the hybrid encoder (`spatial_dim` set), DINOv2's P patch features of the conditioning image are normalised,
projected to the adapter's width and concatenated to the world-latent tokens: the queries' cross-attention then
reads Q + P keys, semantic and spatial. Token concatenation (not pooling or channel-wise fusion) keeps every
patch addressable, so the layout the VLM's merger loses survives into the conditioning; the output shape, and
so the decoder's interface, is unchanged.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..config import AdapterConfig
from ..errors import InvalidInputError


class _Block(nn.Module):
    """Pre-norm block: cross-attention to the latent, self-attention among queries, MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(width)
        self.norm_kv = nn.LayerNorm(width)
        self.cross_q = nn.Linear(width, width)
        self.cross_kv = nn.Linear(width, 2 * width)
        self.cross_out = nn.Linear(width, width)
        self.norm_self = nn.LayerNorm(width)
        self.self_qkv = nn.Linear(width, 3 * width)
        self.self_out = nn.Linear(width, width)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * width, width))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, n, d = q.shape
        split = lambda x: x.view(b, x.shape[1], self.heads, d // self.heads).transpose(1, 2)  # [B, H, N, d]
        out = F.scaled_dot_product_attention(split(q), split(k), split(v))
        return out.transpose(1, 2).reshape(b, n, d)

    def forward(self, x: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        kv = self.cross_kv(self.norm_kv(latent)).chunk(2, dim=-1)
        x = x + self.cross_out(self._attend(self.cross_q(self.norm_q(x)), *kv))
        x = x + self.self_out(self._attend(*self.self_qkv(self.norm_self(x)).chunk(3, dim=-1)))
        return x + self.mlp(self.norm_mlp(x))


class ConditioningAdapter(nn.Module):
    def __init__(self, config: AdapterConfig, latent_dim: int, caption_channels: int, spatial_dim: int | None = None):
        super().__init__()
        self.config = config
        self.latent_in = nn.Linear(latent_dim, config.width)
        self.queries = nn.Parameter(torch.randn(config.num_tokens, config.width) * 0.02)  # [L, W]
        self.blocks = nn.ModuleList(_Block(config.width, config.num_heads, config.mlp_ratio)
                                    for _ in range(config.num_layers))
        self.norm_out = nn.LayerNorm(config.width)
        self.proj_out = nn.Linear(config.width, caption_channels)
        self.spatial_in = None if spatial_dim is None else nn.Sequential(nn.LayerNorm(spatial_dim),
                                                                        nn.Linear(spatial_dim, config.width))

    def forward(self, world_latent: torch.Tensor,
                spatial_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`world_latent` [B, Q, D_vlm] (+ `spatial_features` [B, P, D_s] with the hybrid encoder) ->
        (conditioning [B, L, C], mask [B, L])."""
        dtype = self.proj_out.weight.dtype
        latent = self.latent_in(world_latent.to(dtype))  # [B, Q, W]
        if (self.spatial_in is None) != (spatial_features is None):
            raise InvalidInputError("spatial_features are given exactly when the adapter has the hybrid encoder's "
                                    f"input (it has {'none' if self.spatial_in is None else 'one'})")
        if self.spatial_in is not None:
            latent = torch.cat([latent, self.spatial_in(spatial_features.to(dtype))], 1)  # [B, Q + P, W]
        x = self.queries.unsqueeze(0).expand(latent.shape[0], -1, -1)  # [B, L, W]
        for block in self.blocks:
            x = block(x, latent)
        cond = self.proj_out(self.norm_out(x))  # [B, L, C]
        return cond, torch.ones(cond.shape[:2], dtype=torch.long, device=cond.device)
