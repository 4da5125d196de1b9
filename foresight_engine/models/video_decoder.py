"""Video decoder: LTX-Video's diffusion transformer and its flow-matching Euler schedule (image-to-video).

`forward` is one denoising step (the unit builders compile/export, `stages.DenoiseStage`). The loop around it is
`denoising.py`'s, shared by every way of computing the velocity; this family provides those ways:
- `StepVelocity` over `forward` (the eager reference: the plain transformer call each step),
- `StepVelocity` over a built `denoise` stage (fixed to the geometry it was built for),
- `static_velocity.StaticVelocity` (per-request invariants precomputed once).
The schedule is a plain table (no scheduler state), so concurrent requests cannot step each other's scheduler.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel
from torch import nn

from ..config import SchedulerConfig, TransformerConfig
from .denoising import Schedule, VelocityModel, at
from .static_velocity import StaticVelocity
from .video_geometry import VideoGeometry

StepFn = Callable[..., "tuple[torch.Tensor, ...] | torch.Tensor"]


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


class VideoDecoder(nn.Module):
    def __init__(self, transformer: LTXVideoTransformer3DModel, scheduler: SchedulerConfig):
        super().__init__()
        self.transformer = transformer
        self.scheduler_config = scheduler

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

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

    def velocity_model(self, static: bool = True, step_cache: float | None = None) -> VelocityModel:
        """The eager ways to compute the velocity: the static plan (`static`, optionally with the first-block step
        cache) or the plain transformer forward (the eager reference)."""
        if static:
            return StaticVelocity(self.transformer, step_cache)
        return StepVelocity(lambda geometry: partial(self, geometry=geometry), graphable=True,
                            weights=lambda: self.transformer.state_dict(keep_vars=True).items())

    @staticmethod
    def stage_velocity(stage: StepFn, graphable: bool) -> "StepVelocity":
        """The velocity of a built `denoise` stage (fixed to its build geometry: the engine refuses others)."""
        return StepVelocity(lambda geometry: stage, graphable=graphable)


@dataclass
class StepState:
    """What a one-step function reads besides the latents: conditioning and every step's per-token timestep."""

    step: StepFn
    conditioning: torch.Tensor  # [B, L, C]
    conditioning_mask: torch.Tensor  # [B, L]
    timesteps: torch.Tensor  # [N, B, S]: step i's timestep, 0 on the pinned first frame

    def tensors(self) -> list[torch.Tensor]:
        return [self.conditioning, self.conditioning_mask, self.timesteps]


class StepVelocity:
    """Velocity from a one-step function `(latents, conditioning, mask, timestep) -> velocity` made for a request's
    geometry: the transformer's own forward (the eager reference) or a built stage."""

    def __init__(self, step_for: Callable[[VideoGeometry], StepFn], graphable: bool,
                 weights: Callable[[], Iterable[tuple[str, torch.Tensor]]] = lambda: ()):
        self.step_for = step_for
        self.graphable = graphable
        self._weights = weights

    def weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self._weights()

    def prepare(self, geometry: VideoGeometry, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
                schedule: Schedule) -> StepState:
        batch = conditioning.shape[0]
        moving = 1 - geometry.first_frame_mask(conditioning.device)  # [1, S]
        timesteps = (schedule.timesteps.view(-1, 1, 1) * moving).expand(-1, batch, -1).contiguous()  # [N, B, S]
        return StepState(self.step_for(geometry), conditioning, conditioning_mask, timesteps)

    def velocity(self, state: StepState, latents: torch.Tensor, i: int | torch.Tensor) -> torch.Tensor:
        out = state.step(latents, state.conditioning, state.conditioning_mask, at(state.timesteps, i))
        return (out[0] if isinstance(out, (tuple, list)) else out).float()


__all__ = ["StepState", "StepVelocity", "VideoDecoder", "scheduler_kwargs", "transformer_kwargs"]
