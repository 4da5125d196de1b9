"""HunyuanVideo-1.5's causal video VAE (16x spatial, 4x temporal in the original): encodes the conditioning image,
decodes denoised latents to frames. Latents are scaled by `scaling_factor` only (no per-channel statistics), the
image's latents are the posterior's mode (no random draw) and nothing re-noises the decode, as in diffusers'
`HunyuanVideo15ImageToVideoPipeline`."""
from __future__ import annotations

import torch
from diffusers import AutoencoderKLHunyuanVideo15
from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor
from PIL import Image
from torch import nn

from ..config import Hunyuan15VAEConfig


def vae_kwargs(config: Hunyuan15VAEConfig) -> dict:
    return dict(latent_channels=config.latent_channels, block_out_channels=config.block_out_channels,
                layers_per_block=config.layers_per_block, spatial_compression_ratio=config.spatial_compression,
                temporal_compression_ratio=config.temporal_compression, scaling_factor=config.scaling_factor)


def frame_causal_mask(n_frame: int, n_hw: int, dtype: torch.dtype, device: torch.device,
                      batch_size: int | None = None) -> torch.Tensor:
    """[B, S, S] additive mask, S = n_frame * n_hw: token i sees every token of its own and earlier frames."""
    frame = torch.arange(n_frame * n_hw, device=device) // n_hw
    zero = torch.zeros((), dtype=dtype, device=device)
    minus_inf = torch.full((), float("-inf"), dtype=dtype, device=device)
    mask = torch.where(frame[None, :] <= frame[:, None], zero, minus_inf)
    return mask if batch_size is None else mask.unsqueeze(0).expand(batch_size, -1, -1)


class Hunyuan15VAE(nn.Module):
    timestep_conditioned = False  # its decode draws no noise

    def __init__(self, vae: AutoencoderKLHunyuanVideo15):
        super().__init__()
        self.vae = vae
        for module in vae.modules():
            # diffusers keeps its up/down-samplers' temporal flags as numpy bools (from np.log2 comparisons);
            # torch.compile traces numpy values as tensors, so branching on them breaks the graph: make them Python's
            for flag in ("add_temporal_upsample", "add_temporal_downsample"):
                if hasattr(module, flag):
                    setattr(module, flag, bool(getattr(module, flag)))
            # its attention blocks build their frame-causal mask with a Python loop over every token (as many ops in
            # an exported graph, and 49k iterations per decode at 480p): the same 0 / -inf mask, vectorised
            if hasattr(module, "prepare_causal_attention_mask"):
                module.prepare_causal_attention_mask = frame_causal_mask
        self._processor = HunyuanVideo15ImageProcessor(vae_scale_factor=vae.spatial_compression_ratio,
                                                       do_resize=False, do_convert_rgb=True)

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    @property
    def scaling_factor(self) -> float:
        return self.vae.config.scaling_factor

    def preprocess(self, image: Image.Image, height: int, width: int) -> torch.Tensor:
        """The conditioning image as the pipeline feeds it: resized to cover `height` x `width`, center-cropped,
        then [1, 3, height, width] in [-1, 1] (host side; fp32)."""
        image = self._processor.resize(image, height=height, width=width, resize_mode="crop")
        return self._processor.preprocess(image, height=height, width=width)

    def encode_image(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """`image` [B, 3, H, W] in [-1, 1] -> scaled latents [B, C, 1, h, w] (fp32): the posterior's mode, so nothing
        is drawn on `generator` (the pipeline's `sample_mode="argmax"`)."""
        posterior = self.vae.encode(image.to(self.dtype).unsqueeze(2)).latent_dist
        return (posterior.mode() * self.scaling_factor).float()

    def decode_noise(self, latent_shape: tuple[int, ...], generator: torch.Generator,
                     device: torch.device | str) -> None:
        """No timestep conditioning: the decode needs no noise."""
        return None

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B, C, f, h, w] -> video [B, 3, F, H, W] in [-1, 1] (fp32)."""
        latents = latents.to(self.dtype) / self.scaling_factor
        return self.vae.decode(latents, return_dict=False)[0].float()


__all__ = ["Hunyuan15VAE", "frame_causal_mask", "vae_kwargs"]
