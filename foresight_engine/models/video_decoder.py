"""Video decoder: LTX-Video's diffusion transformer and its flow-matching Euler schedule (image-to-video).

`forward` is one denoising step (the unit builders compile/export, `stages.DenoiseStage`). The loop around it is
`denoising.py`'s, shared by every way of computing the velocity; this family provides those ways:
- `StepVelocity` over `forward` (the eager reference: the plain transformer call each step),
- `StepVelocity` over a built `denoise` stage (fixed to the geometry it was built for),
- `static_velocity.StaticVelocity` (per-request invariants precomputed once).
The schedule is a plain table (no scheduler state), so concurrent requests cannot step each other's scheduler.
The conditioned first frame is pinned: its tokens start as the image's latents and never move (timestep 0).
"""
from __future__ import annotations

from functools import partial

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel

from ..config import SchedulerConfig, TransformerConfig
from .denoising import Schedule, StepFn, VideoStart
from .families import TransformerDecoder
from .static_velocity import StaticVelocity
from .video_geometry import VideoGeometry


def transformer_kwargs(config: TransformerConfig) -> dict:
    return dict(in_channels=config.in_channels, out_channels=config.in_channels, patch_size=config.patch_size,
                patch_size_t=config.patch_size_t, num_attention_heads=config.num_attention_heads,
                attention_head_dim=config.attention_head_dim, cross_attention_dim=config.inner_dim,
                num_layers=config.num_layers, caption_channels=config.caption_channels)


def scheduler_kwargs(config: SchedulerConfig) -> dict:
    # LTX-Video's published scheduler config: resolution-dependent (dynamic) shift, terminal sigma 0.1.
    return dict(num_train_timesteps=config.num_train_timesteps, shift=1.0, use_dynamic_shifting=True,
                base_shift=config.base_shift, max_shift=config.max_shift,
                base_image_seq_len=config.base_image_seq_len, max_image_seq_len=config.max_image_seq_len,
                shift_terminal=0.1)


class VideoDecoder(TransformerDecoder):
    transformer: LTXVideoTransformer3DModel
    scheduler_config: SchedulerConfig
    static_velocity = StaticVelocity
    reference_graphable = True

    def schedule(self, num_steps: int, num_tokens: int, device: torch.device | str = "cpu") -> Schedule:
        """Sigmas linear in [1, 1/N], shifted by the sequence length (LTX-Video's dynamic shift); on `device`."""
        if num_steps == 1:
            # diffusers' terminal stretch divides by zero for a single sigma; one step is plain 1 -> 0
            return Schedule(timesteps=torch.tensor([float(self.scheduler_config.num_train_timesteps)]),
                            sigmas=torch.tensor([1.0, 0.0])).to(device)
        sched = FlowMatchEulerDiscreteScheduler(**scheduler_kwargs(self.scheduler_config))
        c = self.scheduler_config
        slope = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
        mu = c.base_shift + slope * (num_tokens - c.base_image_seq_len)
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu, device="cpu")
        return Schedule(timesteps=sched.timesteps.float(), sigmas=sched.sigmas.float()).to(device)

    def start(self, geometry: VideoGeometry, image_latents: torch.Tensor, generator: torch.Generator) -> VideoStart:
        """Packed noisy latents [1, S, C'] (fp32) with `image_latents` [1, C, 1, h, w] on the (pinned) first frame;
        the noise is drawn after the VAE's posterior sample (diffusers' image-to-video order)."""
        noise = geometry.noise(generator, image_latents.device)
        first = torch.zeros((1, 1, geometry.grid.frames, 1, 1), device=image_latents.device)
        first[:, :, 0] = 1.0
        latents = image_latents.float().expand(geometry.latent_shape) * first + noise * (1 - first)
        return VideoStart(geometry.grid.pack(latents))

    def forward(self, latents: torch.Tensor, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
                timestep: torch.Tensor, geometry: VideoGeometry) -> torch.Tensor:
        """One denoising step: tokens [B, S, C_lat], conditioning [B, L, C_cond], per-token timestep [B, S]
        -> predicted velocity [B, S, C_lat] (fp32)."""
        grid = geometry.grid
        out = self.transformer(hidden_states=latents.to(self.dtype), encoder_hidden_states=conditioning.to(self.dtype),
                               timestep=timestep, encoder_attention_mask=conditioning_mask,
                               num_frames=grid.frames, height=grid.height, width=grid.width,
                               rope_interpolation_scale=geometry.rope_scale, return_dict=False)[0]
        return out.float()

    def reference_step(self, geometry: VideoGeometry) -> StepFn:
        """The eager reference: the plain transformer forward (graph-safe)."""
        return partial(self, geometry=geometry)

    @staticmethod
    def timestep_table(geometry: VideoGeometry, schedule: Schedule, batch: int,
                       device: torch.device) -> torch.Tensor:
        """[N, B, S]: step i's timestep on every moving token, 0 on the pinned first frame."""
        moving = 1 - geometry.first_frame_mask(device)  # [1, S]
        return (schedule.timesteps.view(-1, 1, 1) * moving).expand(-1, batch, -1).contiguous()


__all__ = ["VideoDecoder", "scheduler_kwargs", "transformer_kwargs"]
