"""A static denoising loop for LTX-Video's transformer: per-request invariants computed once, fixed shapes.

`VideoDecoder.denoise` (the reference) calls the whole transformer per step. `DenoisePlan` instead precomputes, once
per request, everything that does not change across steps:
- the timestep embeddings of every step (and of t=0 for the pinned first frame), folded into each block's
  adaptive-norm table: [N + 1, 6, D] per block, [N + 1, 2, D] for the output norm;
- the caption projection and every block's cross-attention keys/values of the conditioning, and its mask bias;
- the RoPE cos/sin table of the latent grid;
- the first-frame tokens (never updated) and the Euler step sizes.
The loop then runs the blocks (their own submodules and weights) on a preallocated latent buffer, updates it in
place, and never reads a value back to the host, so on a GPU it can be captured once as a CUDA graph
(`GraphedDenoiseLoop`). Classifier-free guidance is one batched pass ([uncond, cond]); skipped when guidance is 1.

An optional first-block cache (`step_cache_threshold`): when the first block's residual changed less than the
threshold (relative mean absolute change) since the last fully computed step, the other blocks are skipped and
their last residual is reused. It reads one number per step (a host sync), so it never runs inside a graph.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import torch
from diffusers.models.transformers.transformer_ltx import apply_rotary_emb
from torch.nn import functional as F

from .. import kernels
from .video_decoder import LatentGrid, Schedule, VideoDecoder

StepHook = Callable[[int, int], None]  # (step 1-based, total); may raise to stop the loop


@dataclass
class StepCacheStats:
    computed: int = 0  # steps that ran every block
    skipped: int = 0  # steps that reused the cached residual


@dataclass
class DenoisePlan:
    """Everything one request's loop reads; tensors only, so a graph can capture them as static inputs."""

    latents: torch.Tensor  # [1, S, C] fp32, updated in place
    pinned: int  # leading (first-frame) tokens that are never updated
    step_sizes: torch.Tensor  # [N] fp32: sigma[i+1] - sigma[i]
    token_is_pinned: torch.Tensor  # [1, S, 1, 1] bool
    block_ada: list[torch.Tensor]  # per block [N + 1, 6, D]; row N is t=0 (the pinned frame)
    out_ada: torch.Tensor  # [N + 1, 2, D]
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin [B, S, D] (compact [B, S, D/2] with rmsnorm_rope)
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]]  # per block K, V [B, H, L, d]
    cross_bias: torch.Tensor  # [B, 1, 1, L] additive mask
    guidance_scale: float
    batch: int  # 2 with CFG, else 1
    ops: frozenset[str] = frozenset()  # custom ops the blocks call (foresight_engine.kernels, wired on this device)
    cache_stats: StepCacheStats = field(default_factory=StepCacheStats)

    @property
    def num_steps(self) -> int:
        return self.step_sizes.shape[0]

    def tensors(self) -> list[torch.Tensor]:
        flat = [self.latents, self.step_sizes, self.token_is_pinned, *self.block_ada, self.out_ada, *self.rope,
                self.cross_bias]
        return flat + [t for kv in self.cross_kv for t in kv]


class StaticDenoiser:
    """Builds and runs `DenoisePlan`s with a `VideoDecoder`'s transformer (weights shared, nothing copied)."""

    def __init__(self, decoder: VideoDecoder):
        self.decoder = decoder
        self.transformer = decoder.transformer

    @torch.inference_mode()
    def plan(self, latents: torch.Tensor, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
             schedule: Schedule, grid: LatentGrid, rope_scale: tuple[float, float, float],
             guidance_scale: float = 1.0) -> DenoisePlan:
        """Same arguments as `VideoDecoder.denoise` (the first `grid.tokens_per_frame` tokens are pinned)."""
        tr = self.transformer
        dtype = tr.dtype
        guided = guidance_scale > 1.0
        batch = 2 if guided else 1
        if guided:
            conditioning = torch.cat([torch.zeros_like(conditioning), conditioning])
            conditioning_mask = torch.cat([conditioning_mask, conditioning_mask])
        s = latents.shape[1]
        pinned = grid.tokens_per_frame
        # timestep embeddings of the N step values and of 0 (the pinned frame): [N + 1, 6D], [N + 1, D]
        values = torch.cat([schedule.timesteps, schedule.timesteps.new_zeros(1)])
        temb, embedded = tr.time_embed(values, batch_size=values.shape[0], hidden_dtype=dtype)
        d = embedded.shape[-1]
        block_ada = [blk.scale_shift_table + temb.view(-1, 6, d) for blk in tr.transformer_blocks]
        out_ada = tr.scale_shift_table + embedded.view(-1, 1, d)
        probe = latents.new_empty((batch, s, 1), dtype=dtype)  # rope reads batch size and device only
        rope = tr.rope(probe, grid.frames, grid.height, grid.width, rope_scale)
        ops = kernels.wired_ops(latents.device)
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
        token_is_pinned = (torch.arange(s) < pinned).view(1, s, 1, 1).to(latents.device)
        return DenoisePlan(latents=latents.float().clone(), pinned=pinned,
                           step_sizes=(schedule.sigmas[1:] - schedule.sigmas[:-1]).float().to(latents.device),
                           token_is_pinned=token_is_pinned, block_ada=block_ada, out_ada=out_ada, rope=rope,
                           cross_kv=cross_kv, cross_bias=cross_bias, guidance_scale=float(guidance_scale),
                           batch=batch, ops=ops)

    # ------------------------------------------------------------------------------------------ the loop
    @torch.inference_mode()
    def run(self, plan: DenoisePlan, on_step: StepHook | None = None,
            step_cache_threshold: float | None = None) -> torch.Tensor:
        """Run every step on `plan.latents` in place; returns it ([1, S, C] fp32)."""
        cache = _FirstBlockCache(step_cache_threshold, plan.cache_stats) if step_cache_threshold else None
        for i in range(plan.num_steps):
            self.step(plan, i, cache)
            if on_step is not None:
                on_step(i + 1, plan.num_steps)
        return plan.latents

    def step(self, plan: DenoisePlan, i: int, cache: "_FirstBlockCache | None" = None) -> None:
        tr = self.transformer
        model_in = plan.latents.expand(plan.batch, -1, -1).to(tr.dtype)  # [B, S, C]
        h_in = tr.proj_in(model_in)
        blocks = tr.transformer_blocks
        ada = [self._ada(plan, table, i) for table in plan.block_ada]
        h = self._block(blocks[0], h_in, ada[0], plan.rope, plan.cross_kv[0], plan.cross_bias, plan.ops)
        if cache is None or not cache.try_reuse(h_in, h):
            first = h
            for j in range(1, len(blocks)):
                h = self._block(blocks[j], h, ada[j], plan.rope, plan.cross_kv[j], plan.cross_bias, plan.ops)
            if cache is not None:
                cache.store(h_in, first, h)
        shift, scale = self._ada(plan, plan.out_ada, i).unbind(2)
        velocity = tr.proj_out(tr.norm_out(h) * (1 + scale) + shift).float()  # [B, S, C]
        if plan.batch == 2:
            uncond, cond = velocity.chunk(2)
            velocity = uncond + plan.guidance_scale * (cond - uncond)
        moving = plan.latents[:, plan.pinned:]
        moving.add_(plan.step_sizes[i] * velocity[:, plan.pinned:])

    @staticmethod
    def _ada(plan: DenoisePlan, table: torch.Tensor, i: int) -> torch.Tensor:
        """Per-token modulation for step `i`: the pinned frame at t=0, the rest at t_i. [1, S, k, D]"""
        return torch.where(plan.token_is_pinned, table[-1], table[i])

    @staticmethod
    def _block(blk, h: torch.Tensor, ada: torch.Tensor, rope, cross_kv, cross_bias,
               ops: frozenset[str] = frozenset()) -> torch.Tensor:
        """One LTX block with precomputed modulation, RoPE and cross-attention keys/values. h: [B, S, D].
        `ops`: the custom ops to call instead of the equivalent eager code (same math, fewer passes)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ada.unbind(2)
        a = blk.attn1
        x = StaticDenoiser._modulate(blk.norm1, h, scale_msa, shift_msa, ops)
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
        return h + blk.ff(StaticDenoiser._modulate(blk.norm2, h, scale_mlp, shift_mlp, ops)) * gate_mlp

    @staticmethod
    def _modulate(norm, h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, ops: frozenset[str]):
        if "rmsnorm_modulate" in ops and not torch.compiler.is_compiling():  # inductor fuses it as well
            return kernels.rmsnorm_modulate(h, scale, shift, norm.eps)
        return norm(h) * (1 + scale) + shift


class _FirstBlockCache:
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
        if float(change) >= self.threshold:
            return False
        h_first.add_(self.rest)
        self.stats.skipped += 1
        return True

    def store(self, h_in: torch.Tensor, h_first: torch.Tensor, h_last: torch.Tensor) -> None:
        self.first, self.rest = h_first - h_in, h_last - h_first
        self.stats.computed += 1


class GraphedDenoiseLoop:
    """CUDA only: the whole static loop captured once per plan shape and replayed with new plan contents."""

    def __init__(self, denoiser: StaticDenoiser):
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA GPU and a CUDA build of torch; none is available "
                               "(the static loop runs without a graph on the CPU)")
        self.denoiser = denoiser
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, DenoisePlan]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(plan: DenoisePlan) -> tuple:
        return (plan.pinned, plan.batch, plan.guidance_scale, plan.ops,
                tuple((t.shape, t.dtype) for t in plan.tensors()))

    def run(self, plan: DenoisePlan) -> torch.Tensor:
        with self._lock:
            key = self._key(plan)
            if key not in self._graphs:
                self._graphs[key] = self._capture(plan)
            graph, static = self._graphs[key]
            for dst, src in zip(static.tensors(), plan.tensors()):
                dst.copy_(src)
            graph.replay()
            return static.latents.clone()

    def _capture(self, plan: DenoisePlan) -> tuple[torch.cuda.CUDAGraph, DenoisePlan]:
        # the captured plan's tensors are the graph's static inputs: `run` copies each request's plan into them
        static = DenoisePlan(**{**plan.__dict__, "latents": plan.latents.clone(),
                                "cache_stats": StepCacheStats()})
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            self.denoiser.run(static)  # warm-up outside the graph (allocator, kernels)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            for i in range(static.num_steps):
                self.denoiser.step(static, i)
        return graph, static
