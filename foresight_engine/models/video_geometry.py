"""The video model's geometry: latent grid, RoPE scale and the pinned (never denoised) leading tokens.

Computed once per request (`Engine.prepare` puts it on the prepared request) and by builders for the shape they
specialise stages to (`BuildShape.geometry`): one function, `VideoGeometry.of`, which asks the config's decoder
family (`families.py`), so a built stage and a request agree or are refused.
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

    @classmethod
    def of(cls, decoder, height: int, width: int, num_frames: int) -> "LatentGrid":
        """The grid a decoder section (`config.decoder`: its `vae` compression, its `transformer` patch) makes of a
        video of that size."""
        vae, tr = decoder.vae, decoder.transformer
        return cls(frames=(num_frames - 1) // vae.temporal_compression + 1, height=height // vae.spatial_compression,
                   width=width // vae.spatial_compression, channels=vae.latent_channels, patch=tr.patch_size,
                   patch_t=tr.patch_size_t)

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
    """One video request as its decoder family sees it: pixel shape and frame rate, the latent grid, the RoPE scale
    (LTX-Video's; (1, 1, 1) where the family has none) and the leading tokens that are never denoised (LTX-Video
    pins the conditioned first frame; HunyuanVideo-1.5 denoises every frame, conditioned through its input)."""

    height: int
    width: int
    num_frames: int
    frame_rate: int
    grid: LatentGrid
    rope_scale: tuple[float, float, float]
    pinned: int  # leading tokens that never move (patch_t == 1 puts the first frame's first)

    @classmethod
    def of(cls, config: ModelConfig, height: int, width: int, num_frames: int, frame_rate: int) -> "VideoGeometry":
        from .families import family  # the family modules import this one
        return family(config).geometry(config, height, width, num_frames, frame_rate)

    @property
    def latent_shape(self) -> tuple[int, int, int, int, int]:
        """[1, C, f, h, w] of the (unpacked) video latents."""
        g = self.grid
        return (1, g.channels, g.frames, g.height, g.width)

    def first_frame_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[1, S] float: 1 on the pinned tokens."""
        return (torch.arange(self.grid.num_tokens, device=device) < self.pinned).float().unsqueeze(0)

    def noise(self, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
        """Unpacked Gaussian noise [1, C, f, h, w] (fp32) drawn on `generator` (a CPU generator, as diffusers'
        pipelines draw it) and then moved to `device`, so a seed gives the same video on every device."""
        return torch.randn(self.latent_shape, generator=generator).to(device)


__all__ = ["LatentGrid", "VideoGeometry"]
