"""Video decoder: LTX-Video's diffusion transformer and its flow-matching Euler schedule (image-to-video).

`forward` is one denoising step (the unit builders compile/export). `denoise` is the reference loop; it follows
diffusers' `LTXImageToVideoPipeline` exactly (same schedule, per-token timesteps that pin the conditioned first
frame, Euler update in fp32 on the unconditioned frames), but keeps no state between requests: the schedule is a
plain table, so concurrent requests cannot step each other's scheduler.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel
from torch import nn

from ..config import SchedulerConfig, TransformerConfig


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
class Schedule:
    timesteps: torch.Tensor  # [N] float32, in [0, num_train_timesteps]
    sigmas: torch.Tensor  # [N + 1] float32, ends at 0


class VideoDecoder(nn.Module):
    def __init__(self, transformer: LTXVideoTransformer3DModel, scheduler: SchedulerConfig):
        super().__init__()
        self.transformer = transformer
        self.scheduler_config = scheduler

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def schedule(self, num_steps: int, num_tokens: int) -> Schedule:
        """Sigmas linear in [1, 1/N], shifted by the sequence length (LTX-Video's dynamic shift)."""
        if num_steps == 1:
            # diffusers' terminal stretch divides by zero for a single sigma; one step is plain 1 -> 0
            return Schedule(timesteps=torch.tensor([float(self.scheduler_config.num_train_timesteps)]),
                            sigmas=torch.tensor([1.0, 0.0]))
        sched = FlowMatchEulerDiscreteScheduler(**scheduler_kwargs(self.scheduler_config))
        c = self.scheduler_config
        slope = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
        mu = c.base_shift + slope * (num_tokens - c.base_image_seq_len)
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu, device="cpu")
        return Schedule(timesteps=sched.timesteps.float(), sigmas=sched.sigmas.float())

    def check_request(self, grid: LatentGrid, rope_scale: tuple[float, float, float], batch: int) -> None:
        """Raise if this decoder cannot run a request of this shape. The eager one runs any; built ones
        (fixed shapes) override it so a mismatch is refused before any model runs."""

    def forward(self, latents: torch.Tensor, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
                timestep: torch.Tensor, grid: LatentGrid, rope_scale: tuple[float, float, float]) -> torch.Tensor:
        """One denoising step: tokens [B, S, C_lat], conditioning [B, L, C_cond], per-token timestep [B, S]
        -> predicted velocity [B, S, C_lat] (fp32)."""
        out = self.transformer(hidden_states=latents.to(self.dtype), encoder_hidden_states=conditioning.to(self.dtype),
                               timestep=timestep, encoder_attention_mask=conditioning_mask,
                               num_frames=grid.frames, height=grid.height, width=grid.width,
                               rope_interpolation_scale=rope_scale, return_dict=False)[0]
        return out.float()

    def denoise(self, latents: torch.Tensor, first_frame_mask: torch.Tensor, conditioning: torch.Tensor,
                conditioning_mask: torch.Tensor, schedule: Schedule, grid: LatentGrid,
                rope_scale: tuple[float, float, float], guidance_scale: float = 1.0,
                on_step: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Euler steps from packed noisy `latents` [B, S, C] whose first-frame tokens hold the image latents.

        `first_frame_mask` [B, S] is 1 on the conditioned frame's tokens: their timestep is 0 and they are never
        updated. With `guidance_scale > 1` the unconditional branch (zero conditioning) runs in the same batch.
        """
        guided = guidance_scale > 1.0
        if guided:
            conditioning = torch.cat([torch.zeros_like(conditioning), conditioning])
            conditioning_mask = torch.cat([conditioning_mask, conditioning_mask])
        pinned = grid.tokens_per_frame  # the conditioned frame's tokens come first (patch_t == 1)
        n = len(schedule.timesteps)
        for i in range(n):
            model_in = torch.cat([latents, latents]) if guided else latents
            mask = torch.cat([first_frame_mask, first_frame_mask]) if guided else first_frame_mask
            timestep = schedule.timesteps[i].expand(model_in.shape[0]).unsqueeze(-1) * (1 - mask)  # [B, S]
            velocity = self(model_in, conditioning, conditioning_mask, timestep, grid, rope_scale)
            if guided:
                uncond, cond = velocity.chunk(2)
                velocity = uncond + guidance_scale * (cond - uncond)
            dt = schedule.sigmas[i + 1] - schedule.sigmas[i]
            moved = (latents[:, pinned:].float() + dt * velocity[:, pinned:]).to(velocity.dtype)
            latents = torch.cat([latents[:, :pinned], moved], dim=1)
            if on_step is not None:
                on_step(i + 1, n)
        return latents
