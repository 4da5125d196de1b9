"""One denoising loop (flow matching, Euler steps) for every way of computing the velocity.

A `VelocityModel` says only how step i's velocity is computed: the plain transformer forward (the eager
reference), a static plan precomputed once per request, or a built stage function. Everything else happens here,
once, in `denoise_step`: classifier-free guidance (one batched pass [uncond, cond]; the unconditional branch is zero
conditioning) and the Euler update, in fp32 and in place, of the tokens that move (the leading `pinned` tokens,
e.g. an image-to-video model's conditioned first frame, never move).

Everything the loop reads is a tensor on the latents' device (step sizes, guidance scale, the model's state), and
nothing is read back to the host, so the whole loop can be captured as one CUDA graph (`engine/graphs.py`)
whatever computes the velocity, as long as that is graph-safe too (`VelocityModel.graphable`).

The step index `i` is a Python int in eager loops, or a 0-d int64 tensor where `denoise_step` itself is compiled
(`static_velocity.StaticStep`: one graph serves every step; `at` reads a per-step row either way).
A decoder family (models/video_decoder.py for LTX-Video) provides its velocity models; this file is shared.
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


@dataclass(frozen=True)
class Schedule:
    timesteps: torch.Tensor  # [N] float32, in [0, num_train_timesteps]
    sigmas: torch.Tensor  # [N + 1] float32, ends at 0

    def to(self, device: torch.device | str) -> "Schedule":
        return Schedule(self.timesteps.to(device), self.sigmas.to(device))


class VelocityState(Protocol):
    """One request's per-request data a velocity model reads (conditioning, precomputed tables, ...)."""

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor `velocity` reads from the state: a CUDA graph's static inputs, in a fixed order."""


class VelocityModel(Protocol):
    graphable: bool  # whether `velocity` is graph-safe (no host reads, no allocation that changes per call)

    def prepare(self, geometry: Any, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
                schedule: Schedule) -> VelocityState:
        """Per-request state: `conditioning` [B, L, C] / `conditioning_mask` [B, L] already batched for CFG."""

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


def start(model: VelocityModel, geometry: Any, latents: torch.Tensor, pinned: int, conditioning: torch.Tensor,
          conditioning_mask: torch.Tensor, schedule: Schedule,
          guidance_scale: float) -> tuple[VelocityState, DenoiseLoop]:
    """The model's per-request state and the loop over packed `latents` [1, S, C] (copied: the caller's stay)."""
    conditioning, conditioning_mask = guided(conditioning, conditioning_mask, guidance_scale)
    state = model.prepare(geometry, conditioning, conditioning_mask, schedule)
    device = latents.device
    loop = DenoiseLoop(latents=latents.float().clone(),
                       step_sizes=(schedule.sigmas[1:] - schedule.sigmas[:-1]).float().to(device),
                       guidance=torch.full((), float(guidance_scale), device=device), pinned=pinned,
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


__all__ = ["DenoiseLoop", "Schedule", "StepHook", "StepProgram", "VelocityModel", "VelocityState", "at", "denoise",
           "denoise_step", "guided", "start"]
