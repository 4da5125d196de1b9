"""The video model's geometry: latent grid, RoPE scale and a request's initial latents (image-to-video).

Computed once per request (`Engine.prepare` puts it on the prepared request) and by builders for the shape they
specialise stages to (`BuildShape.geometry`): one function, so a built stage and a request agree or are refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ModelConfig


@dataclass(frozen=True)
class LatentGrid:
    """Latent video shape: frames x height x width (after VAE compression), channels, and the transformer patch."""

    frames: int
    height: int
    width: int
    channels: int
    patch: int = 1
    patch_t: int = 1

    @property
    def tokens_per_frame(self) -> int:
        return (self.height // self.patch) * (self.width // self.patch)

    @property
    def num_tokens(self) -> int:
        return (self.frames // self.patch_t) * self.tokens_per_frame

    @property
    def token_channels(self) -> int:
        return self.channels * self.patch_t * self.patch ** 2

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, F, H, W] -> tokens [B, F/pt * H/p * W/p, C * pt * p * p]."""
        b, c, f, h, w = latents.shape
        p, pt = self.patch, self.patch_t
        x = latents.reshape(b, c, f // pt, pt, h // p, p, w // p, p)
        return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, self.num_tokens, c * pt * p * p)

    def unpack(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of `pack`: [B, S, D] -> [B, C, F, H, W]."""
        b = tokens.shape[0]
        p, pt = self.patch, self.patch_t
        x = tokens.reshape(b, self.frames // pt, self.height // p, self.width // p, -1, pt, p, p)
        return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, -1, self.frames, self.height, self.width)


@dataclass(frozen=True)
class VideoGeometry:
    """One video request as LTX-Video sees it: its pixel shape and frame rate, the latent grid and RoPE scale."""

    height: int
    width: int
    num_frames: int
    frame_rate: int
    grid: LatentGrid
    rope_scale: tuple[float, float, float]

    @classmethod
    def of(cls, config: ModelConfig, height: int, width: int, num_frames: int, frame_rate: int) -> "VideoGeometry":
        vae, tr = config.vae, config.transformer
        grid = LatentGrid(frames=(num_frames - 1) // vae.temporal_compression + 1,
                          height=height // vae.spatial_compression, width=width // vae.spatial_compression,
                          channels=vae.latent_channels, patch=tr.patch_size, patch_t=tr.patch_size_t)
        rope_scale = (vae.temporal_compression / frame_rate, float(vae.spatial_compression),
                      float(vae.spatial_compression))
        return cls(height, width, num_frames, frame_rate, grid, rope_scale)

    @property
    def latent_shape(self) -> tuple[int, int, int, int, int]:
        """[1, C, f, h, w] of the (unpacked) video latents."""
        g = self.grid
        return (1, g.channels, g.frames, g.height, g.width)

    @property
    def pinned(self) -> int:
        """Leading tokens of the conditioned first frame: never updated (patch_t == 1 puts them first)."""
        return self.grid.tokens_per_frame

    def first_frame_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[1, S] float: 1 on the conditioned first frame's tokens."""
        return (torch.arange(self.grid.num_tokens, device=device) < self.pinned).float().unsqueeze(0)

    def initial_latents(self, image_latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Packed noisy latents [1, S, C'] (fp32) with `image_latents` [1, C, 1, h, w] on the first frame. The noise is
        drawn on `generator` (a CPU generator, after the VAE's posterior sample: diffusers' image-to-video order)
        and then moved to the latents' device, so a seed gives the same video on every device up to precision."""
        device = image_latents.device
        noise = torch.randn(self.latent_shape, generator=generator).to(device)
        first = torch.zeros((1, 1, self.grid.frames, 1, 1), device=device)
        first[:, :, 0] = 1.0
        latents = image_latents.float().expand(self.latent_shape) * first + noise * (1 - first)
        return self.grid.pack(latents)


__all__ = ["LatentGrid", "VideoGeometry"]
