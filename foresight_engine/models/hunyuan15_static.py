"""HunyuanVideo-1.5's denoising step with fixed shapes: the built stage's math and the static plan's.

diffusers' forward regroups the text tokens by their mask (boolean indexing: data-dependent shapes) and reads
`all(image_embeds == 0)` back to the host; neither can be exported or captured. This file computes the same
velocity from the transformer's own submodules and weights without either:
- the conditioning tokens stay in place (the adapter's, `L` of them); padded ones are zeroed after the token
  refiner and masked as attention keys. The ByT5 glyph tokens and SigLIP image tokens diffusers would add are
  all masked in this engine (see `hunyuan15_decoder.py`), so they contribute nothing and are left out;
- the patch embedding of [latents; image condition; mask] is split: the image condition's share is computed
  once, each step embeds only the latents (their packed layout is the convolution's weight layout);
- modulation comes from per-timestep tables: rows [K, 12, D] per block (the video stream's six, then the text
  stream's), [K, 2, D] for the output norm.
`Hunyuan15Conditions.of` builds the tables for K timesteps: the batch's own per-row timesteps (the one-step stage:
K = B) or every step of the schedule (the static plan: K = N, built once per request). `velocity` runs every
block for one row selection of them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers.models.embeddings import apply_rotary_emb
from torch.nn import functional as F

from .denoising import Schedule
from .static_velocity import FirstBlockCache, StepCacheStats, TransformerVelocity
from .video_geometry import LatentGrid, VideoGeometry


@dataclass
class Hunyuan15Conditions:
    """Everything a step reads besides the latents; tensors only (a CUDA graph's static inputs)."""

    block_ada: list[torch.Tensor]  # per block [K, 12, D]
    out_ada: torch.Tensor  # [K, 2, D]: scale, shift of the output norm
    text: torch.Tensor  # [K, B, L, D] refined conditioning tokens per timestep row (the stage: [1, B, L, D])
    keys: torch.Tensor  # [B, 1, 1, S + L] bool: which keys attention may read (every video token, valid text)
    rope: tuple[torch.Tensor, torch.Tensor]  # cos, sin [S, d]
    image: torch.Tensor  # [1 | B, S, D]: the image condition's share of the patch embedding (+ its bias)

    def tensors(self) -> list[torch.Tensor]:
        return [*self.block_ada, self.out_ada, self.text, self.keys, *self.rope, self.image]

    @classmethod
    def of(cls, tr, grid: LatentGrid, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
           timesteps: torch.Tensor, image_condition: torch.Tensor, per_row: bool) -> "Hunyuan15Conditions":
        """Tables for `timesteps` [K]; `per_row`: K == B and row b modulates batch row b (one step of the stage),
        else row k is step k for the whole batch (the static plan). `conditioning` [B, L, C], mask [B, L],
        `image_condition` [1 | B, S, C'] packed like the latents."""
        dtype, device = tr.dtype, conditioning.device
        batch = conditioning.shape[0]
        t = timesteps.to(dtype)
        temb = tr.time_embed(t)  # [K, D]
        d = temb.shape[-1]
        act = F.silu(temb)
        block_ada = [torch.cat([blk.norm1.linear(act), blk.norm1_context.linear(act)], -1).view(-1, 12, d)
                     for blk in tr.transformer_blocks]
        out_ada = tr.norm_out.linear(act).view(-1, 2, d)
        cond, valid = conditioning.to(dtype), conditioning_mask.bool()
        rows = [t] if per_row else [t[k].expand(batch) for k in range(t.shape[0])]
        text = torch.stack([_refined(tr, cond, conditioning_mask, row, valid) for row in rows])  # [K', B, L, D]
        s = grid.num_tokens
        keys = torch.cat([valid.new_ones(batch, s), valid], 1)[:, None, None, :]
        probe = torch.empty((), device=device).expand(1, 1, grid.frames, grid.height, grid.width)  # shape only
        cos, sin = tr.rope(probe)
        weight = tr.x_embedder.proj.weight  # [D, 2C + 1, pt, p, p]: latents' channels, then the condition's
        channels = grid.channels
        image = F.linear(image_condition.to(dtype), weight[:, channels:].flatten(1), tr.x_embedder.proj.bias)
        return cls(block_ada, out_ada, text, keys, (cos, sin), image)


def _refined(tr, conditioning: torch.Tensor, mask: torch.Tensor, timestep: torch.Tensor,
             valid: torch.Tensor) -> torch.Tensor:
    """The token refiner at per-row `timestep` [B], plus the text type embedding; padded tokens zeroed (with
    `where`: a fully masked refiner row may hold NaN on some attention kernels). [B, L, D]"""
    text = tr.context_embedder(conditioning, timestep, mask)
    text = text + tr.cond_type_embed.weight[0]
    return torch.where(valid[..., None], text, torch.zeros((), dtype=text.dtype, device=text.device))


def velocity(tr, latents: torch.Tensor, c: Hunyuan15Conditions, row: slice | int,
             cache: FirstBlockCache | None = None) -> torch.Tensor:
    """Velocity [B, S, C] (fp32) at packed `latents` [B, S, C * pt * p * p] with the tables' `row` (an int picks one
    step for the whole batch; a slice keeps per-row modulation)."""
    dtype = tr.dtype
    k = slice(row, row + 1) if isinstance(row, int) else row
    channels = latents.shape[-1]
    weight = tr.x_embedder.proj.weight[:, : channels // _patch_volume(tr)].flatten(1)  # [D, C * pt * p * p]
    h_in = F.linear(latents.to(dtype), weight) + c.image  # [B, S, D]
    e = c.text[row if isinstance(row, int) else 0]  # [B, L, D]
    blocks = tr.transformer_blocks
    last = len(blocks) - 1
    h, e = _block(blocks[0], h_in, e, c.block_ada[0][k], c, text_after=last > 0)
    if cache is None or not cache.try_reuse(h_in, h):
        first = h
        for j in range(1, len(blocks)):
            h, e = _block(blocks[j], h, e, c.block_ada[j][k], c, text_after=j < last)
        if cache is not None:
            cache.store(h_in, first, h)
    scale, shift = c.out_ada[k].unbind(1)  # [R, D]
    h = tr.norm_out.norm(h) * (1 + scale[:, None]) + shift[:, None]
    return tr.proj_out(h).float()  # [B, S, C * pt * p * p], channels first like the packed latents


def _patch_volume(tr) -> int:
    p, pt = tr.config.patch_size, tr.config.patch_size_t
    return pt * p * p


def _block(blk, h: torch.Tensor, e: torch.Tensor, ada: torch.Tensor, c: Hunyuan15Conditions,
           text_after: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One dual-stream block: video tokens `h` [B, S, D] and text tokens `e` [B, L, D] attend jointly; `ada`
    [R, 12, D] (R = 1 or B). `text_after=False` skips the text stream's update (nothing reads it after the last)."""
    (shift, scale, gate, shift_mlp, scale_mlp, gate_mlp,
     c_shift, c_scale, c_gate, c_shift_mlp, c_scale_mlp, c_gate_mlp) = (a[:, None] for a in ada.unbind(1))
    attn = blk.attn
    x = blk.norm1.norm(h) * (1 + scale) + shift
    y = blk.norm1_context.norm(e) * (1 + c_scale) + c_shift
    heads = lambda t: t.unflatten(2, (attn.heads, -1))  # [B, N, H, d]
    q = apply_rotary_emb(attn.norm_q(heads(attn.to_q(x))), c.rope, sequence_dim=1)
    k = apply_rotary_emb(attn.norm_k(heads(attn.to_k(x))), c.rope, sequence_dim=1)
    v = heads(attn.to_v(x))
    eq = attn.norm_added_q(heads(attn.add_q_proj(y)))
    ek = attn.norm_added_k(heads(attn.add_k_proj(y)))
    ev = heads(attn.add_v_proj(y))
    joint = [torch.cat(pair, 1).transpose(1, 2) for pair in ((q, eq), (k, ek), (v, ev))]  # [B, H, S + L, d]
    out = F.scaled_dot_product_attention(*joint, attn_mask=c.keys).transpose(1, 2).flatten(2).to(h.dtype)
    s = h.shape[1]
    h = h + attn.to_out[0](out[:, :s]) * gate
    h = h + gate_mlp * blk.ff(blk.norm2(h) * (1 + scale_mlp) + shift_mlp)
    if not text_after:
        return h, e
    e = e + attn.to_add_out(out[:, s:]) * c_gate
    e = e + c_gate_mlp * blk.ff_context(blk.norm2_context(e) * (1 + c_scale_mlp) + c_shift_mlp)
    return h, e


@dataclass
class Hunyuan15Plan:
    """One request's static plan: the conditions for every step of its schedule, and the step cache's state."""

    conditions: Hunyuan15Conditions
    step_cache: FirstBlockCache | None = None
    cache_stats: StepCacheStats = field(default_factory=StepCacheStats)

    def tensors(self) -> list[torch.Tensor]:
        return self.conditions.tensors()


class Hunyuan15StaticVelocity(TransformerVelocity):
    """The velocity of a HunyuanVideo-1.5 transformer from a plan built once per request."""

    def prepare(self, geometry: VideoGeometry, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
                schedule: Schedule, image_condition: torch.Tensor | None = None) -> Hunyuan15Plan:
        conditions = Hunyuan15Conditions.of(self.transformer, geometry.grid, conditioning, conditioning_mask,
                                            schedule.timesteps, image_condition, per_row=False)
        plan = Hunyuan15Plan(conditions)
        if self.step_cache is not None:
            plan.step_cache = FirstBlockCache(self.step_cache, plan.cache_stats)
        return plan

    def velocity(self, plan: Hunyuan15Plan, latents: torch.Tensor, i: int) -> torch.Tensor:
        return velocity(self.transformer, latents, plan.conditions, i, plan.step_cache)


__all__ = ["Hunyuan15Conditions", "Hunyuan15Plan", "Hunyuan15StaticVelocity", "velocity"]
