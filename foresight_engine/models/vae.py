"""LTX-Video's causal video VAE: encodes the conditioning image, decodes denoised latents to frames."""
from __future__ import annotations

import torch
from diffusers import AutoencoderKLLTXVideo
from diffusers.video_processor import VideoProcessor
from PIL import Image
from torch import nn

from ..config import VAEConfig


def vae_kwargs(config: VAEConfig) -> dict:
    n = len(config.block_out_channels)
    return dict(latent_channels=config.latent_channels, block_out_channels=config.block_out_channels,
                down_block_types=("LTXVideoDownBlock3D",) * n, layers_per_block=config.layers_per_block,
                spatio_temporal_scaling=config.spatio_temporal_scaling,
                decoder_block_out_channels=config.decoder_block_out_channels,
                decoder_layers_per_block=config.decoder_layers_per_block,
                decoder_spatio_temporal_scaling=config.decoder_spatio_temporal_scaling,
                decoder_inject_noise=config.decoder_inject_noise,
                upsample_residual=(False,) * len(config.decoder_block_out_channels),
                upsample_factor=(1,) * len(config.decoder_block_out_channels),
                patch_size=config.patch_size, patch_size_t=config.patch_size_t)


class VideoVAE(nn.Module):
    def __init__(self, vae: AutoencoderKLLTXVideo):
        super().__init__()
        self.vae = vae
        self._processor = VideoProcessor(vae_scale_factor=vae.spatial_compression_ratio)

    def preprocess(self, image: Image.Image, height: int, width: int) -> torch.Tensor:
        """The conditioning image as the image-to-video pipeline feeds it: resized to [1, 3, height, width] in
        [-1, 1] (host side; fp32)."""
        return self._processor.preprocess(image, height=height, width=width)

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)
        return (self.vae.latents_mean.view(shape).to(like.device, like.dtype),
                self.vae.latents_std.view(shape).to(like.device, like.dtype))

    @property
    def timestep_conditioned(self) -> bool:
        """LTX-Video >= 0.9.1 decodes from a slightly re-noised latent (its decode needs noise)."""
        return bool(self.vae.config.timestep_conditioning)

    def encode_image(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """`image` [B, 3, H, W] in [-1, 1] -> normalised latents [B, C, 1, h, w] (fp32), sampled with `generator`
        (diffusers draws the posterior sample on the generator's device and moves it: a CPU generator gives the
        same latents on every device)."""
        posterior = self.vae.encode(image.to(self.dtype).unsqueeze(2)).latent_dist
        latents = posterior.sample(generator).float()
        mean, std = self._stats(latents)
        return (latents - mean) / std

    def decode_noise(self, latent_shape: tuple[int, ...], generator: torch.Generator,
                     device: torch.device | str) -> torch.Tensor | None:
        """The noise a timestep-conditioned decode adds, drawn on (CPU) `generator` then moved; None otherwise."""
        if not self.timestep_conditioned:
            return None
        return torch.randn(latent_shape, generator=generator, dtype=self.dtype).to(device)

    def decode(self, latents: torch.Tensor, noise: torch.Tensor | None = None, decode_timestep: float = 0.0,
               decode_noise_scale: float | None = None) -> torch.Tensor:
        """Normalised latents [B, C, f, h, w] -> video [B, 3, F, H, W] in [-1, 1] (fp32). A timestep-conditioned
        VAE needs `noise` (`decode_noise`)."""
        mean, std = self._stats(latents)
        latents = (latents * std / self.vae.config.scaling_factor + mean).to(self.dtype)
        timestep = None
        if self.timestep_conditioned:
            scale = decode_timestep if decode_noise_scale is None else decode_noise_scale
            latents = (1 - scale) * latents + scale * noise.to(latents.dtype)
            timestep = torch.full((latents.shape[0],), decode_timestep, dtype=latents.dtype, device=latents.device)
        return self.vae.decode(latents, timestep, return_dict=False)[0].float()
