"""Tensor-only wrappers of the model stack's stages: what builders compile and export.

Every wrapper takes and returns tensors only (no caches, grids or generators), so one wrapper serves
torch.compile, torch.onnx.export and the accuracy checks alike. Python-level settings are baked in at
construction (the denoising step's latent grid and RoPE scale).

The backbone's KV cache crosses the boundary as two stacked tensors `[L, B, H_kv, T, d]` (keys, values):
transformers' `DynamicCache` is a Python object that neither ONNX nor a compiled graph can take as an input.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from ..errors import ConfigError
from .adapter import ConditioningAdapter
from .backbone import Backbone
from .vae import VideoVAE
from .video_decoder import LatentGrid, VideoDecoder
from .vision_tower import VisionTower


def stack_cache(cache: DynamicCache) -> tuple[torch.Tensor, torch.Tensor]:
    """A DynamicCache -> (keys, values), each [L, B, H_kv, T, d]."""
    return (torch.stack([layer.keys for layer in cache.layers]), torch.stack([layer.values for layer in cache.layers]))


def unstack_cache(keys: torch.Tensor, values: torch.Tensor, config) -> DynamicCache:
    """(keys, values) [L, B, H_kv, T, d] -> a DynamicCache holding them."""
    cache = DynamicCache(config=config)
    for i in range(keys.shape[0]):
        cache.update(keys[i], values[i], i)
    return cache


class VisionStage(nn.Module):
    """pixel_values [N, C*T*P*P], grid_thw [n, 3] -> visual tokens [N / merge^2, D]."""

    def __init__(self, tower: VisionTower):
        super().__init__()
        self.tower = tower

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        return self.tower(pixel_values, grid_thw)


class PrefillStage(nn.Module):
    """embeds [B, S, D], position_ids [3, B, S] -> logits [B, V], world_latent [B, Q, D], keys, values
    [L, B, H_kv, S, d] (the prompt's cache, without the query tokens)."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, embeds: torch.Tensor, position_ids: torch.Tensor):
        out = self.backbone.prefill(embeds.to(self.backbone.dtype), position_ids)
        return (out.logits, out.world_latent, *stack_cache(out.cache))


class DecodeStage(nn.Module):
    """token_ids [B, 1], position [B], keys/values [L, B, H_kv, T, d] -> logits [B, V], keys/values [.., T+1, d]."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, token_ids: torch.Tensor, position: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        dtype = self.backbone.dtype
        cache = unstack_cache(keys.to(dtype), values.to(dtype), self.backbone.language_model.config)
        logits = self.backbone.decode_step(token_ids, position, cache)
        return (logits, *stack_cache(cache))


class AdapterStage(nn.Module):
    """world_latent [B, Q, D] -> conditioning [B, L, C], mask [B, L]."""

    def __init__(self, adapter: ConditioningAdapter):
        super().__init__()
        self.adapter = adapter

    def forward(self, world_latent: torch.Tensor):
        return self.adapter(world_latent)


class DenoiseStage(nn.Module):
    """ONE denoising step at a fixed latent grid and RoPE scale: latents [B, S, C], conditioning [B, L, C_cond],
    conditioning_mask [B, L], timestep [B, S] -> velocity [B, S, C] (fp32)."""

    def __init__(self, decoder: VideoDecoder, grid: LatentGrid, rope_scale: tuple[float, float, float]):
        super().__init__()
        self.decoder = decoder
        self.grid = grid
        self.rope_scale = tuple(float(x) for x in rope_scale)

    def forward(self, latents: torch.Tensor, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
                timestep: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents, conditioning, conditioning_mask, timestep, self.grid, self.rope_scale)


class VAEDecodeStage(nn.Module):
    """Normalised latents [B, C, f, h, w] -> video [B, 3, F, H, W] in [-1, 1] (fp32). Only for VAEs without
    timestep conditioning (their decode draws no noise, so it is a pure function of the latents)."""

    def __init__(self, vae: VideoVAE):
        super().__init__()
        if vae.vae.config.timestep_conditioning:
            raise ConfigError("the VAE decode stage needs a VAE without timestep conditioning (its decode draws "
                              "noise); this VAE has timestep_conditioning=True")
        self.vae = vae

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents, generator=None)
