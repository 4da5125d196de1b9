"""Video decoder: HunyuanVideo-1.5's image-to-video transformer and its fixed-shift flow-matching schedule.

How the adapter's output maps onto the transformer's conditioning (diffusers' `HunyuanVideo15ImageToVideoPipeline`
takes four): the adapter's tokens [B, L, C] and mask take the place of the Qwen2.5-VL prompt embeddings
(`encoder_hidden_states` / `encoder_attention_mask`, C = `text_embed_dim`); the ByT5 glyph embeddings are
masked out (one zero token with a zero mask: what the pipeline itself feeds a prompt without quoted text); the
SigLIP image embeddings are zero, which the transformer treats as "no image tokens" (its text-to-video switch
masks them). The image conditions through its latents instead: every step's input is [noisy latents; the first
frame's latents (zero on the other frames); a mask channel, 1 on the first frame], and every frame is denoised
(no pinned tokens, one timestep per batch row).

Ways of computing the velocity (the loop is `denoising.py`'s):
- `StepVelocity` over `diffusers_step` (static=False, the eager reference): the library's forward called as the
  pipeline calls it (one call per classifier-free-guidance branch, like its guider), so frames equal the
  pipeline's bit for bit. It reads a value back to the host (`all(image_embeds == 0)`): not graphable;
- `forward`, one fixed-shape step (`hunyuan15_static.py`): what builders compile and export (the `denoise`
  stage), also graph-safe;
- `Hunyuan15StaticVelocity` (static=True): the same math with every per-request table built once.
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideo15Transformer3DModel

from ..config import Hunyuan15SchedulerConfig, Hunyuan15TransformerConfig
from .denoising import Schedule, StepFn, VideoStart
from .families import TransformerDecoder
from .hunyuan15_static import Hunyuan15Conditions, Hunyuan15StaticVelocity, velocity
from .video_geometry import VideoGeometry

GLYPH_TOKENS = 1  # masked ByT5 tokens the reference forward feeds: the fewest the pipeline accepts
IMAGE_TOKENS = 1  # zero SigLIP tokens likewise


def transformer_kwargs(config: Hunyuan15TransformerConfig, latent_channels: int) -> dict:
    return dict(in_channels=2 * latent_channels + 1, out_channels=latent_channels,
                num_attention_heads=config.num_attention_heads, attention_head_dim=config.attention_head_dim,
                num_layers=config.num_layers, num_refiner_layers=config.num_refiner_layers,
                mlp_ratio=config.mlp_ratio, patch_size=config.patch_size, patch_size_t=config.patch_size_t,
                text_embed_dim=config.text_embed_dim, text_embed_2_dim=config.text_embed_2_dim,
                image_embed_dim=config.image_embed_dim, rope_theta=config.rope_theta,
                rope_axes_dim=config.rope_axes_dim, target_size=config.target_size, task_type="i2v")


def scheduler_kwargs(config: Hunyuan15SchedulerConfig) -> dict:
    return dict(num_train_timesteps=config.num_train_timesteps, shift=config.shift, use_dynamic_shifting=False)


class Hunyuan15Decoder(TransformerDecoder):
    transformer: HunyuanVideo15Transformer3DModel
    scheduler_config: Hunyuan15SchedulerConfig
    static_velocity = Hunyuan15StaticVelocity
    reference_graphable = False

    def schedule(self, num_steps: int, num_tokens: int, device: torch.device | str = "cpu") -> Schedule:
        """Sigmas linear in [1, 1/N] through the fixed shift, then 0 (the pipeline's); on `device`."""
        sched = FlowMatchEulerDiscreteScheduler(**scheduler_kwargs(self.scheduler_config))
        sched.set_timesteps(sigmas=np.linspace(1.0, 0.0, num_steps + 1)[:-1], device="cpu")
        return Schedule(timesteps=sched.timesteps.float(), sigmas=sched.sigmas.float()).to(device)

    def start(self, geometry: VideoGeometry, image_latents: torch.Tensor, generator: torch.Generator) -> VideoStart:
        """Pure noise (every frame is denoised), and the image condition every step reads: [first frame's latents
        (`image_latents` [1, C, 1, h, w]), zero elsewhere; mask, 1 on the first frame], packed [1, S, (C+1)*p]."""
        noise = geometry.noise(generator, image_latents.device)
        grid, device = geometry.grid, image_latents.device
        condition = torch.zeros((1, grid.channels + 1, grid.frames, grid.height, grid.width), device=device)
        condition[:, : grid.channels, :1] = image_latents.float()
        condition[:, grid.channels, 0] = 1.0
        return VideoStart(grid.pack(noise), grid.pack(condition))

    def forward(self, latents: torch.Tensor, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
                timestep: torch.Tensor, image_condition: torch.Tensor, geometry: VideoGeometry) -> torch.Tensor:
        """One fixed-shape denoising step: tokens [B, S, C'], conditioning [B, L, C], mask [B, L], per-row
        timestep [B], image condition [B, S, C''] -> velocity [B, S, C'] (fp32)."""
        tr = self.transformer
        conditions = Hunyuan15Conditions.of(tr, geometry.grid, conditioning, conditioning_mask, timestep,
                                            image_condition, per_row=True)
        return velocity(tr, latents, conditions, slice(None))

    def diffusers_step(self, latents: torch.Tensor, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
                       timestep: torch.Tensor, image_condition: torch.Tensor, geometry: VideoGeometry) -> torch.Tensor:
        """The library's forward as the image-to-video pipeline calls it, once per batch row (its guider runs the
        conditional and unconditional branches as separate calls); same inputs and output as `forward`."""
        tr, grid, dtype = self.transformer, geometry.grid, self.dtype
        rows = []
        for b in range(latents.shape[0]):
            x = torch.cat([grid.unpack(latents[b:b + 1]), grid.unpack(image_condition[b:b + 1])], 1).to(dtype)
            out = tr(hidden_states=x, timestep=timestep[b:b + 1].to(dtype),
                     encoder_hidden_states=conditioning[b:b + 1].to(dtype),
                     encoder_attention_mask=conditioning_mask[b:b + 1].to(dtype),
                     encoder_hidden_states_2=x.new_zeros(1, GLYPH_TOKENS, tr.config.text_embed_2_dim),
                     encoder_attention_mask_2=x.new_zeros(1, GLYPH_TOKENS),
                     image_embeds=x.new_zeros(1, IMAGE_TOKENS, tr.config.image_embed_dim), return_dict=False)[0]
            rows.append(grid.pack(out))
        return torch.cat(rows).float()

    def reference_step(self, geometry: VideoGeometry) -> StepFn:
        """The eager reference: diffusers' forward as the pipeline calls it (reads a value back: not graphable)."""
        return partial(self.diffusers_step, geometry=geometry)

    @staticmethod
    def timestep_table(geometry: VideoGeometry, schedule: Schedule, batch: int,
                       device: torch.device) -> torch.Tensor:
        """[N, B]: step i's timestep for every batch row (no frame is pinned)."""
        return schedule.timesteps.to(device).view(-1, 1).expand(-1, batch).contiguous()


__all__ = ["GLYPH_TOKENS", "Hunyuan15Decoder", "IMAGE_TOKENS", "scheduler_kwargs", "transformer_kwargs"]
