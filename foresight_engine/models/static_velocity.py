"""The static plan: LTX-Video's velocity with every per-request invariant computed once, fixed shapes.

The plain transformer forward (`denoising.StepVelocity`, the reference) recomputes per step what does not
change across steps. `StaticVelocity.prepare` computes it once per request (`DenoisePlan`):
- the timestep embeddings of every step (and of t=0 for the pinned first frame), folded into each block's
  adaptive-norm table: [N + 1, 6, D] per block, [N + 1, 2, D] for the output norm;
- the caption projection and every block's cross-attention keys/values of the conditioning, and its mask bias;
- the RoPE cos/sin table of the latent grid.
`velocity` then runs the transformer's own blocks (their submodules and weights) with fixed shapes and no host
read (an interruption point before each block checks a host flag only: `interrupts.py`), so the shared loop
(`denoising.py`: CFG and the Euler update) can be captured as one CUDA graph.

An optional first-block cache (`step_cache`): when the first block's residual changed less than the threshold
(relative mean absolute change) since the last fully computed step, the other blocks are skipped and their last
residual is reused. It reads one number per step (a host sync), so it is not graphable.

`StaticStep` is `denoising.denoise_step` over this plan as one module of tensors (the step index a tensor too):
what the compile backend exports and compiles ahead of time as its `denoise` stage, so one graph holds the whole
step (velocity, guidance, Euler update); `step_program` runs such a compiled step inside the shared loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from diffusers.models.transformers.transformer_ltx import apply_rotary_emb
from torch.nn import functional as F

from .. import kernels
from .denoising import DenoiseLoop, Index, Schedule, StepProgram, at, denoise_step
from .interrupts import interruption_point
from .video_geometry import VideoGeometry


@dataclass
class StepCacheStats:
    computed: int = 0  # steps that ran every block
    skipped: int = 0  # steps that reused the cached residual


@dataclass
class DenoisePlan:
    """Everything one request's velocity reads; tensors only, so a graph can capture them as static inputs."""

    token_is_pinned: torch.Tensor  # [1, S, 1, 1] bool
    block_ada: list[torch.Tensor]  # per block [N + 1, 6, D]; row N is t=0 (the pinned frame)
    out_ada: torch.Tensor  # [N + 1, 2, D]
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin [B, S, D] (compact [B, S, D/2] with rmsnorm_rope)
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per block K, V [B, H, L, d]
    cross_bias: torch.Tensor  # [B, 1, 1, L] additive mask
    ops: frozenset[str] = frozenset()  # custom ops the blocks call (foresight_engine.kernels, wired on this device)
    step_cache: "FirstBlockCache | None" = None
    cache_stats: StepCacheStats = field(default_factory=StepCacheStats)

    def tensors(self) -> list[torch.Tensor]:
        flat = [self.token_is_pinned, *self.block_ada, self.out_ada, *self.rope, self.cross_bias]
        return flat + [t for kv in self.cross_kv for t in kv]

    @classmethod
    def of_tensors(cls, flat: "list[torch.Tensor] | tuple[torch.Tensor, ...]", ops: frozenset[str]) -> "DenoisePlan":
        """The plan whose `tensors()` are `flat` (5 + 3 * blocks of them)."""
        blocks = (len(flat) - 5) // 3
        kv = flat[5 + blocks:]
        return cls(token_is_pinned=flat[0], block_ada=list(flat[1:1 + blocks]), out_ada=flat[1 + blocks],
                   rope=(flat[2 + blocks], flat[3 + blocks]), cross_bias=flat[4 + blocks],
                   cross_kv=[(kv[2 * j], kv[2 * j + 1]) for j in range(blocks)], ops=ops)


class TransformerVelocity:
    """The base of a family's static velocity model: the transformer whose weights it reads (shared, nothing
    copied) and the optional first-block step cache threshold (a cached loop is not graphable: it decides on the
    host whether to skip)."""

    def __init__(self, transformer: torch.nn.Module, step_cache: float | None = None,
                 ops: frozenset[str] | None = None):
        """`ops`: the custom ops the blocks call (default: those wired on the plan's device); a built step fixes
        them (its rope table layout depends on them)."""
        self.transformer = transformer
        self.step_cache = step_cache
        self.ops = ops
        self.graphable = step_cache is None

    def weights(self) -> Iterable[tuple[str, torch.Tensor]]:
        return self.transformer.state_dict(keep_vars=True).items()


class StaticVelocity(TransformerVelocity):
    """The velocity of an LTX-Video transformer from a `DenoisePlan`."""

    def prepare(self, geometry: VideoGeometry, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
                schedule: Schedule, image_condition: torch.Tensor | None = None) -> DenoisePlan:
        # LTX-Video conditions on the image through the pinned first frame: `image_condition` is always None
        tr = self.transformer
        dtype, device = tr.dtype, conditioning.device
        batch, grid = conditioning.shape[0], geometry.grid
        s = grid.num_tokens
        # timestep embeddings of the N step values and of 0 (the pinned frame): [N + 1, 6D], [N + 1, D]
        values = torch.cat([schedule.timesteps, schedule.timesteps.new_zeros(1)])
        temb, embedded = tr.time_embed(values, batch_size=values.shape[0], hidden_dtype=dtype)
        d = embedded.shape[-1]
        block_ada = [blk.scale_shift_table + temb.view(-1, 6, d) for blk in tr.transformer_blocks]
        out_ada = tr.scale_shift_table + embedded.view(-1, 1, d)
        probe = torch.empty((batch, s, 1), dtype=dtype, device=device)  # rope reads batch size and device only
        rope = tr.rope(probe, grid.frames, grid.height, grid.width, geometry.rope_scale)
        ops = kernels.wired_ops(device) if self.ops is None else self.ops
        if "rmsnorm_rope" in ops:
            rope = kernels.compact_rope(*rope)  # what the fused op reads: one angle per pair
        caption = tr.caption_projection(conditioning.to(dtype))  # [B, L, D]
        cross_kv = []
        for blk in tr.transformer_blocks:
            a = blk.attn2
            k = a.norm_k(a.to_k(caption)).unflatten(2, (a.heads, -1)).transpose(1, 2)  # [B, H, L, d]
            v = a.to_v(caption).unflatten(2, (a.heads, -1)).transpose(1, 2)
            cross_kv.append((k, v))
        cross_bias = ((1 - conditioning_mask.to(dtype)) * -10000.0)[:, None, None, :]  # [B, 1, 1, L]
        token_is_pinned = (torch.arange(s, device=device) < geometry.pinned).view(1, s, 1, 1)
        plan = DenoisePlan(token_is_pinned=token_is_pinned, block_ada=block_ada, out_ada=out_ada, rope=rope,
                           cross_kv=cross_kv, cross_bias=cross_bias, ops=ops)
        if self.step_cache is not None:
            plan.step_cache = FirstBlockCache(self.step_cache, plan.cache_stats)
        return plan

    def velocity(self, plan: DenoisePlan, latents: torch.Tensor, i: Index) -> torch.Tensor:
        tr = self.transformer
        h_in = tr.proj_in(latents.to(tr.dtype))  # [B, S, D]
        blocks = tr.transformer_blocks
        ada = [self._ada(plan, table, i) for table in plan.block_ada]
        interruption_point()  # before every block: a cancel lands within one block (host flag, no sync)
        h = self._block(blocks[0], h_in, ada[0], plan.rope, plan.cross_kv[0], plan.cross_bias, plan.ops)
        cache = plan.step_cache
        if cache is None or not cache.try_reuse(h_in, h):
            first = h
            for j in range(1, len(blocks)):
                interruption_point()
                h = self._block(blocks[j], h, ada[j], plan.rope, plan.cross_kv[j], plan.cross_bias, plan.ops)
            if cache is not None:
                cache.store(h_in, first, h)
        shift, scale = self._ada(plan, plan.out_ada, i).unbind(2)
        return tr.proj_out(tr.norm_out(h) * (1 + scale) + shift).float()  # [B, S, C]

    @staticmethod
    def _ada(plan: DenoisePlan, table: torch.Tensor, i: Index) -> torch.Tensor:
        """Per-token modulation for step `i`: the pinned frame at t=0, the rest at t_i. [1, S, k, D]"""
        return torch.where(plan.token_is_pinned, table[-1], at(table, i))

    @staticmethod
    def _block(blk, h: torch.Tensor, ada: torch.Tensor, rope, cross_kv, cross_bias,
               ops: frozenset[str] = frozenset()) -> torch.Tensor:
        """One LTX block with precomputed modulation, RoPE and cross-attention keys/values. h: [B, S, D].
        `ops`: the custom ops to call instead of the equivalent eager code (same math, fewer passes)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ada.unbind(2)
        a = blk.attn1
        x = StaticVelocity._modulate(blk.norm1, h, scale_msa, shift_msa, ops)
        if "rmsnorm_rope" in ops:
            q, k = kernels.rmsnorm_rope(a.to_q(x), a.to_k(x), a.norm_q.weight, a.norm_k.weight, *rope, a.norm_q.eps)
        else:
            q = apply_rotary_emb(a.norm_q(a.to_q(x)), rope)
            k = apply_rotary_emb(a.norm_k(a.to_k(x)), rope)
        v = a.to_v(x)
        if "varlen_attention" in ops:  # one sequence per batch element
            b, s, d = q.shape
            cu = torch.arange(0, (b + 1) * s, s, dtype=torch.int32, device=q.device)
            per_token = lambda t: t.reshape(b * s, a.heads, -1)  # [B * S, H, d]
            out = kernels.varlen_attention(per_token(q), per_token(k), per_token(v), cu, s).view(b, s, d)
        else:
            heads = lambda t: t.unflatten(2, (a.heads, -1)).transpose(1, 2)  # [B, H, S, d]
            out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v)).transpose(1, 2).flatten(2)
        h = h + a.to_out[0](out) * gate_msa
        c = blk.attn2
        q = c.norm_q(c.to_q(h)).unflatten(2, (c.heads, -1)).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, *cross_kv, attn_mask=cross_bias).transpose(1, 2).flatten(2)
        h = h + c.to_out[0](out)
        return h + blk.ff(StaticVelocity._modulate(blk.norm2, h, scale_mlp, shift_mlp, ops)) * gate_mlp

    @staticmethod
    def _modulate(norm, h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, ops: frozenset[str]):
        if "rmsnorm_modulate" in ops and not torch.compiler.is_compiling():  # inductor fuses it as well
            return kernels.rmsnorm_modulate(h, scale, shift, norm.eps)
        return norm(h) * (1 + scale) + shift


class StaticStep(torch.nn.Module):
    """`denoising.denoise_step` over an LTX-Video `DenoisePlan`, as a module of tensors with the loop's shape baked in (batch:
    2 with guidance; pinned tokens). latents [1, S, C] fp32, step [] int64, step_sizes [N] fp32, guidance [] fp32,
    then the plan's `tensors()` -> the latents after step `step` [1, S, C] fp32 (a new tensor: the input stays)."""

    def __init__(self, transformer: torch.nn.Module, batch: int, pinned: int, ops: frozenset[str]):
        super().__init__()
        self.transformer = transformer
        self.velocity = StaticVelocity(transformer, ops=ops)
        self.batch, self.pinned, self.ops = batch, pinned, ops

    def forward(self, latents: torch.Tensor, step: torch.Tensor, step_sizes: torch.Tensor, guidance: torch.Tensor,
                *plan: torch.Tensor) -> torch.Tensor:
        loop = DenoiseLoop(latents.clone(), step_sizes, guidance, self.pinned, self.batch)
        denoise_step(self.velocity, DenoisePlan.of_tensors(plan, self.ops), loop, step)
        return loop.latents


def step_program(step: "Callable[..., torch.Tensor]") -> StepProgram:
    """The loop program of a compiled `StaticStep` (same signature): step i of the shared loop, in place."""
    def program(model, plan: DenoisePlan, loop: DenoiseLoop, i: int) -> None:
        loop.latents.copy_(step(loop.latents, loop.steps[i], loop.step_sizes, loop.guidance, *plan.tensors()))
    return program


class FirstBlockCache:
    """First-block cache state of one request's loop."""

    def __init__(self, threshold: float, stats: StepCacheStats):
        self.threshold = threshold
        self.stats = stats
        self.first: torch.Tensor | None = None  # first block's residual at the last computed step [B, S, D]
        self.rest: torch.Tensor | None = None  # the other blocks' residual there [B, S, D]

    def try_reuse(self, h_in: torch.Tensor, h_first: torch.Tensor) -> bool:
        """If the first block's residual is close to the last computed step's, add the cached rest to `h_first`
        in place; True when reused."""
        if self.first is None:
            return False
        residual = h_first - h_in
        change = (residual - self.first).abs().mean() / self.first.abs().mean().clamp_min(1e-12)
        if float(change) >= self.threshold:  # the host read that makes the step cache ungraphable
            return False
        h_first.add_(self.rest)
        self.stats.skipped += 1
        return True

    def store(self, h_in: torch.Tensor, h_first: torch.Tensor, h_last: torch.Tensor) -> None:
        self.first, self.rest = h_first - h_in, h_last - h_first
        self.stats.computed += 1


__all__ = ["DenoisePlan", "FirstBlockCache", "StaticStep", "StaticVelocity", "StepCacheStats",
           "TransformerVelocity", "step_program"]
