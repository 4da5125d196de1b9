"""One denoising loop (flow matching, Euler steps) for every way of computing the velocity.

A `VelocityModel` says only how step i's velocity is computed: the plain transformer forward (the eager
reference), a static plan precomputed once per request, or a built stage function (`StepVelocity` covers the two
that call a one-step function). Everything else happens here,
once, in `denoise_step`: classifier-free guidance (one batched pass [uncond, cond]; the unconditional branch is zero
conditioning) and the Euler update, in fp32 and in place, of the tokens that move (the leading `pinned` tokens,
e.g. an image-to-video model's conditioned first frame, never move).

Everything the loop reads is a tensor on the latents' device (step sizes, guidance scale, the model's state), and
nothing is read back to the host, so the whole loop can be captured as one CUDA graph (`engine/graphs.py`)
whatever computes the velocity, as long as that is graph-safe too (`VelocityModel.graphable`).

The step index `i` is a Python int in eager loops, or a 0-d int64 tensor where `denoise_step` itself is compiled
(`static_velocity.StaticStep`: one graph serves every step; `at` reads a per-step row either way).
A decoder family (`families.py`: LTX-Video, HunyuanVideo-1.5) provides its velocity models and how a request's
video starts (`VideoStart`); this file is shared.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import torch

StepHook = Callable[[int, int], None]  # (step 1-based, total); may raise to stop the loop
Index = int | torch.Tensor  # a step index: a Python int, or a 0-d int64 tensor inside a compiled step


def at(table: torch.Tensor, i: Index) -> torch.Tensor:
    """`table[i]` for an int or a 0-d tensor index (no host read: a compiled step indexes with a tensor)."""
    if isinstance(i, int):
        return table[i]
    return table.index_select(0, i.reshape(1)).squeeze(0)


StepFn = Callable[..., "tuple[torch.Tensor, ...] | torch.Tensor"]


@dataclass(frozen=True)
class Schedule:
    timesteps: torch.Tensor  # [N] float32, in [0, num_train_timesteps]
    sigmas: torch.Tensor  # [N + 1] float32, ends at 0

    def to(self, device: torch.device | str) -> "Schedule":
        return Schedule(self.timesteps.to(device), self.sigmas.to(device))


@dataclass(frozen=True)
class VideoStart:
    """Where a request's denoising starts (the decoder family's `start`): the packed noisy latents, and the
    per-request image condition every step reads besides them (None for a family that pins the image's latents
    into the first frame instead)."""

    latents: torch.Tensor  # [1, S, C] fp32
    image_condition: torch.Tensor | None = None  # [1, S, C'] in the family's layout


class VelocityState(Protocol):
    """One request's per-request data a velocity model reads (conditioning, precomputed tables, ...)."""

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor `velocity` reads from the state: a CUDA graph's static inputs, in a fixed order."""


class VelocityModel(Protocol):
    graphable: bool  # whether `velocity` is graph-safe (no host reads, no allocation that changes per call)

    def prepare(self, geometry: Any, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
                schedule: Schedule, image_condition: torch.Tensor | None = None) -> VelocityState:
        """Per-request state: `conditioning` [B, L, C] / `conditioning_mask` [B, L] already batched for CFG;
        `image_condition` [1, S, C'] (`VideoStart`), the same for every batch row."""

    def velocity(self, state: Any, latents: torch.Tensor, i: int) -> torch.Tensor:
        """Step `i`'s velocity [B, S, C] (fp32) at `latents` [B, S, C]."""

    def weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        """The tensors it reads besides the state (module weights): what a graph capture checks too."""


@dataclass
class DenoiseLoop:
    """The loop's own state: the latents it updates and the per-step constants, all on the latents' device."""

    latents: torch.Tensor  # [1, S, C] fp32, updated in place
    step_sizes: torch.Tensor  # [N] fp32: sigma[i+1] - sigma[i]
    guidance: torch.Tensor  # [] fp32
    pinned: int  # leading tokens that never move
    batch: int  # 2 with classifier-free guidance, else 1
    steps: torch.Tensor | None = None  # [N] int64 0..N-1: step indices a compiled step reads (views, no copy)

    def __post_init__(self) -> None:
        if self.steps is None:
            self.steps = torch.arange(self.step_sizes.shape[0], device=self.step_sizes.device)

    @property
    def num_steps(self) -> int:
        return self.step_sizes.shape[0]

    def tensors(self) -> list[torch.Tensor]:
        return [self.latents, self.step_sizes, self.guidance, self.steps]


def guided(conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
           guidance_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The conditioning as the loop's batch: [uncond (zeros), cond] with guidance, else as is."""
    if guidance_scale <= 1.0:
        return conditioning, conditioning_mask
    return (torch.cat([torch.zeros_like(conditioning), conditioning]),
            torch.cat([conditioning_mask, conditioning_mask]))


def start(model: VelocityModel, geometry: Any, video: VideoStart, conditioning: torch.Tensor,
          conditioning_mask: torch.Tensor, schedule: Schedule,
          guidance_scale: float) -> tuple[VelocityState, DenoiseLoop]:
    """The model's per-request state and the loop over `video.latents` [1, S, C] (copied: the caller's stay); the
    geometry's `pinned` leading tokens never move."""
    conditioning, conditioning_mask = guided(conditioning, conditioning_mask, guidance_scale)
    state = model.prepare(geometry, conditioning, conditioning_mask, schedule, video.image_condition)
    device = video.latents.device
    loop = DenoiseLoop(latents=video.latents.float().clone(),
                       step_sizes=(schedule.sigmas[1:] - schedule.sigmas[:-1]).float().to(device),
                       guidance=torch.full((), float(guidance_scale), device=device), pinned=geometry.pinned,
                       batch=conditioning.shape[0])
    return state, loop


def denoise_step(model: VelocityModel, state: VelocityState, loop: DenoiseLoop, i: Index) -> None:
    """Step `i`, in place on `loop.latents`: the one place for classifier-free guidance and the Euler update."""
    velocity = model.velocity(state, loop.latents.expand(loop.batch, -1, -1), i)  # [B, S, C] fp32
    if loop.batch == 2:
        uncond, cond = velocity.chunk(2)
        velocity = uncond + loop.guidance * (cond - uncond)
    loop.latents[:, loop.pinned:].add_(at(loop.step_sizes, i) * velocity[:, loop.pinned:])


# How a loop runs step i: `denoise_step` itself, or a compiled/packaged `denoise_step` (the same code as one graph,
# `static_velocity.step_program`)
StepProgram = Callable[[VelocityModel, VelocityState, DenoiseLoop, int], None]


def denoise(model: VelocityModel, state: VelocityState, loop: DenoiseLoop, on_step: StepHook | None = None,
            program: StepProgram = denoise_step) -> torch.Tensor:
    """Every step, in place; returns `loop.latents` ([1, S, C] fp32). `on_step` runs between steps."""
    for i in range(loop.num_steps):
        program(model, state, loop, i)
        if on_step is not None:
            on_step(i + 1, loop.num_steps)
    return loop.latents


@dataclass
class StepState:
    """What a one-step function reads besides the latents: the conditioning, every step's timestep (in the
    family's layout) and the per-request inputs that follow the timestep (e.g. the image condition)."""

    step: StepFn
    conditioning: torch.Tensor  # [B, L, C]
    conditioning_mask: torch.Tensor  # [B, L]
    timesteps: torch.Tensor  # [N, B, ...]: step i's timestep
    extra: tuple[torch.Tensor, ...] = ()

    def tensors(self) -> list[torch.Tensor]:
        return [self.conditioning, self.conditioning_mask, self.timesteps, *self.extra]


# (geometry, schedule, batch, device) -> every step's timestep [N, B, ...] as the family's one-step function takes it
TimestepTable = Callable[[Any, Schedule, int, torch.device], torch.Tensor]


class StepVelocity:
    """Velocity from a one-step function `(latents, conditioning, mask, timestep, *extra) -> velocity` made for a
    request's geometry: a family's plain forward (the eager reference) or a built `denoise` stage. `extra` is the
    batched image condition when the family has one."""

    def __init__(self, step_for: Callable[[Any], StepFn], graphable: bool, timestep_table: TimestepTable,
                 weights: Callable[[], Iterable[tuple[str, torch.Tensor]]] = lambda: ()):
        self.step_for = step_for
        self.graphable = graphable
        self.timestep_table = timestep_table
        self._weights = weights

    def weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self._weights()

    def prepare(self, geometry: Any, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
                schedule: Schedule, image_condition: torch.Tensor | None = None) -> StepState:
        batch = conditioning.shape[0]
        timesteps = self.timestep_table(geometry, schedule, batch, conditioning.device)
        extra = () if image_condition is None else (image_condition.expand(batch, -1, -1).contiguous(),)
        return StepState(self.step_for(geometry), conditioning, conditioning_mask, timesteps, extra)

    def velocity(self, state: StepState, latents: torch.Tensor, i: Index) -> torch.Tensor:
        out = state.step(latents, state.conditioning, state.conditioning_mask, at(state.timesteps, i), *state.extra)
        return (out[0] if isinstance(out, (tuple, list)) else out).float()


__all__ = ["DenoiseLoop", "Index", "Schedule", "StepFn", "StepHook", "StepProgram", "StepState", "StepVelocity",
           "TimestepTable", "VelocityModel", "VelocityState", "VideoStart", "at", "denoise", "denoise_step", "guided",
           "start"]
