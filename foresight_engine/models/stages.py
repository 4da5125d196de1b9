"""Tensor-only wrappers of the model stack's stages: what the engine calls per stage and what builders compile
and export (one wrapper for both, so a built stage replaces exactly what the eager engine runs).

Every wrapper takes and returns tensors only (no caches, grids or generators); Python-level settings are baked in
at construction (the denoising step's geometry). The KV cache crosses the boundary as tensors `[L, B, H_kv, T, d]`:
the prefill takes the cached prefix and returns the prompt's keys/values, the decode step takes the whole
fixed-length buffers and returns the new token's; the runtime writes them into its `KVCache`.
"""
from __future__ import annotations

import torch
from torch import nn

from .adapter import ConditioningAdapter
from .backbone import Backbone
from .spatial_encoder import SpatialEncoder
from .video_decoder import VideoDecoder
from .video_geometry import VideoGeometry
from .vision_tower import VisionLayout, VisionTower


class VisionStage(nn.Module):
    """ONE image of a fixed patch grid: pixel_values [N, C*T*P*P] and the grid's host tables (`VisionLayout`:
    window_index, reverse_index [N / merge^2], cu_window_seqlens [W + 1], cu_seqlens [t + 1], cos, sin [N, d])
    -> visual tokens [N / merge^2, D]. The longest window and frame (shapes, not data) are baked in."""

    def __init__(self, tower: VisionTower, max_window_seqlen: int, max_seqlen: int):
        super().__init__()
        self.tower = tower
        self.max_window_seqlen = max_window_seqlen
        self.max_seqlen = max_seqlen

    @classmethod
    def for_layout(cls, tower: VisionTower, layout: VisionLayout) -> "VisionStage":
        return cls(tower, layout.max_window_seqlen, layout.max_seqlen)

    def forward(self, pixel_values: torch.Tensor, window_index: torch.Tensor, reverse_index: torch.Tensor,
                cu_window_seqlens: torch.Tensor, cu_seqlens: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
        return self.tower(pixel_values, window_index, reverse_index, cu_window_seqlens, cu_seqlens, cos, sin,
                          max_window_seqlen=self.max_window_seqlen, max_seqlen=self.max_seqlen)


class SpatialStage(nn.Module):
    """pixel_values [B, 3, S, S] (the conditioning image, DINOv2's pre-processing) -> spatial features [B, P, D]."""

    def __init__(self, encoder: SpatialEncoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values)


class PrefillStage(nn.Module):
    """embeds [B, S, D], position_ids [3, B, S], past_keys/past_values [L, B, H_kv, P, d] (the cached prefix, P >= 0)
    -> logits [B, V], world_latent [B, Q, D], keys/values [L, B, H_kv, S, d] (the prompt's, not the queries')."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, embeds: torch.Tensor, position_ids: torch.Tensor, past_keys: torch.Tensor,
                past_values: torch.Tensor):
        dtype = self.backbone.dtype
        return self.backbone.prefill(embeds.to(dtype), position_ids, past_keys.to(dtype), past_values.to(dtype))


class DecodeStage(nn.Module):
    """token_ids [B, 1], position [B], keys/values [L, B, H_kv, T, d] (the whole cache), slot [] (filled below it)
    -> logits [B, V], new_keys/new_values [L, B, H_kv, 1, d]. Fixed shapes."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, token_ids: torch.Tensor, position: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                slot: torch.Tensor):
        dtype = self.backbone.dtype
        return self.backbone.decode(token_ids, position, keys.to(dtype), values.to(dtype), slot)


class AdapterStage(nn.Module):
    """world_latent [B, Q, D] (+ spatial features [B, P, D_s] with the hybrid encoder) -> conditioning [B, L, C],
    mask [B, L]."""

    def __init__(self, adapter: ConditioningAdapter):
        super().__init__()
        self.adapter = adapter

    def forward(self, world_latent: torch.Tensor, spatial_features: torch.Tensor | None = None):
        return self.adapter(world_latent, spatial_features)


class DenoiseStage(nn.Module):
    """LTX-Video's ONE denoising step at a fixed geometry: latents [B, S, C], conditioning [B, L, C_cond],
    conditioning_mask [B, L], timestep [B, S] -> velocity [B, S, C] (fp32)."""

    def __init__(self, decoder: VideoDecoder, geometry: VideoGeometry):
        super().__init__()
        self.decoder = decoder
        self.geometry = geometry

    def forward(self, latents: torch.Tensor, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
                timestep: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents, conditioning, conditioning_mask, timestep, self.geometry)


class VAEDecodeStage(nn.Module):
    """Latents [B, C, f, h, w] (+ noise of that shape for a timestep-conditioned VAE) -> video [B, 3, F, H, W] in
    [-1, 1] (fp32). Any family's VAE component."""

    def __init__(self, vae: nn.Module, decode_timestep: float = 0.0):
        super().__init__()
        self.vae = vae
        self.decode_timestep = decode_timestep

    def forward(self, latents: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            return self.vae.decode(latents)
        return self.vae.decode(latents, noise, self.decode_timestep)
