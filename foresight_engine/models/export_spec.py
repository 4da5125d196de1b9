"""Export specs: for each stage, its tensor-only wrapper, input/output names, dynamic axes, sample inputs for a
shape and a min/opt/max shape profile (what TensorRT's optimization profiles and the ONNX export consume).

Model code only: no onnx, tensorrt or builders imports here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from .stages import AdapterStage, DecodeStage, DenoiseStage, PrefillStage, VAEDecodeStage, VisionStage
from .video_decoder import LatentGrid

Shape = tuple[int, ...]


@dataclass(frozen=True)
class BuildShape:
    """The request shape a build is specialised for (the `opt` point of every profile)."""

    height: int
    width: int
    num_frames: int
    frame_rate: int = 24
    guidance: bool = False  # classifier-free guidance doubles the denoising batch
    prompt_tokens: int = 64  # typical prompt length (images included): the prefill's `opt`
    max_new_tokens: int = 16

    @classmethod
    def for_config(cls, config: ModelConfig, height: int | None = None, width: int | None = None,
                   num_frames: int | None = None) -> "BuildShape":
        gen = config.generation
        shape = cls(height=height or gen.height, width=width or gen.width, num_frames=num_frames or gen.num_frames,
                    frame_rate=gen.frame_rate, max_new_tokens=gen.max_new_tokens)
        shape.check(config)
        return shape

    def check(self, config: ModelConfig) -> None:
        step, r = config.spatial_step, config.temporal_step
        for name in ("height", "width"):
            value = getattr(self, name)
            if value <= 0 or value % step:
                raise ConfigError(f"build shape {name}={value} must be a positive multiple of {step}")
        if self.num_frames < 1 or (self.num_frames - 1) % r:
            raise ConfigError(f"build shape num_frames={self.num_frames} must be of the form {r}*k+1")

    @property
    def batch(self) -> int:
        return 2 if self.guidance else 1

    def latent_grid(self, config: ModelConfig) -> LatentGrid:
        vae, tr = config.vae, config.transformer
        return LatentGrid(frames=(self.num_frames - 1) // vae.temporal_compression + 1,
                          height=self.height // vae.spatial_compression, width=self.width // vae.spatial_compression,
                          channels=vae.latent_channels, patch=tr.patch_size, patch_t=tr.patch_size_t)

    def rope_scale(self, config: ModelConfig) -> tuple[float, float, float]:
        vae = config.vae
        return (vae.temporal_compression / self.frame_rate, vae.spatial_compression, vae.spatial_compression)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of_latents(cls, frames: int, height: int, width: int, config: ModelConfig, **rest: Any) -> "BuildShape":
        """The request shape whose latent grid is `frames` x `height` x `width` (the inverse of `latent_grid`)."""
        vae = config.vae
        return cls(num_frames=(frames - 1) * vae.temporal_compression + 1, height=height * vae.spatial_compression,
                   width=width * vae.spatial_compression, **rest)

    def describe(self, other: "BuildShape | None" = None) -> str:
        """`9 frames at 64x64` (height x width); frame rate and guidance too where they differ from `other`."""
        text = f"{self.num_frames} frames at {self.height}x{self.width}"
        if other is not None and other.frame_rate != self.frame_rate:
            text += f", {self.frame_rate} fps"
        if other is not None and other.guidance != self.guidance:
            text += ", with classifier-free guidance" if self.guidance else ", without guidance"
        return text

    def mismatch(self, asked: "BuildShape") -> str | None:
        """Why a request of shape `asked` cannot run on stages built for this shape, naming the request arguments
        to change either way (None when it can). Prompt length and answer length are profile ranges, not fixed."""
        differ = [(n, getattr(self, n), getattr(asked, n)) for n in ("num_frames", "height", "width")
                  if getattr(self, n) != getattr(asked, n)]
        rebuild = [f"{n}={a}" for n, _, a in differ]
        ask = [f"{n}={b}" for n, b, _ in differ]
        if self.frame_rate != asked.frame_rate:  # builds take the preset's frame rate (it sets the RoPE scale)
            ask.append(f"frame_rate={self.frame_rate}")
        if self.guidance != asked.guidance:
            rebuild.append("classifier-free guidance" if asked.guidance else "no guidance")
            ask.append("guidance_scale=2 (any value > 1)" if self.guidance else "guidance_scale=1")
        if not ask:
            return None
        return (f"this artifact is built for {self.describe(asked)}; the request asks for {asked.describe(self)}: "
                + (f"rebuild with {', '.join(rebuild)} or " if rebuild else "") + f"ask for {', '.join(ask)}")


@dataclass(frozen=True)
class ExportSpec:
    """One stage. `wrap(model, shape)` gives its tensor-only module; `sample_inputs(shape)` fp32 inputs (seeded);
    `profile(shape)` {input: (min, opt, max)} shapes; `dynamic_axes` {tensor: {axis: name}}."""

    name: str
    component: str  # the precision-policy / artifact component it belongs to
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    wrap: Callable[[Any, BuildShape], nn.Module]
    sampler: Callable[[BuildShape, torch.Generator], tuple[torch.Tensor, ...]]
    profiler: Callable[[BuildShape], dict[str, tuple[Shape, Shape, Shape]]]

    def sample_inputs(self, shape: BuildShape, seed: int = 0) -> tuple[torch.Tensor, ...]:
        return self.sampler(shape, torch.Generator().manual_seed(seed))

    def profile(self, shape: BuildShape) -> dict[str, tuple[Shape, Shape, Shape]]:
        return self.profiler(shape)


def _image_patches(config: ModelConfig) -> int:
    """Patches per side of one image at the processor's pixel budget (a multiple of the merge size)."""
    v = config.vision
    unit = v.patch_size * v.spatial_merge_size
    side = max(1, int(math.sqrt(config.processor.max_pixels)) // unit)
    return side * v.spatial_merge_size


def export_specs(config: ModelConfig) -> dict[str, ExportSpec]:
    """The six stages of the stack, in run order."""
    v, t, a, tr = config.vision, config.text, config.adapter, config.transformer
    patch_dim = 3 * v.temporal_patch_size * v.patch_size ** 2
    side = _image_patches(config)
    per_image = side * side  # patches per image
    kv = (t.num_hidden_layers, 1, t.num_key_value_heads, 0, t.head_dim)  # T filled in below
    max_prompt = config.processor.max_prompt_tokens

    def vision_inputs(s, g):
        return (torch.randn(per_image, patch_dim, generator=g), torch.tensor([[1, side, side]]))

    def prefill_inputs(s, g):
        n = s.prompt_tokens
        return (torch.randn(1, n, t.hidden_size, generator=g),
                torch.arange(n).view(1, 1, n).expand(3, 1, n).contiguous())

    def decode_inputs(s, g):
        n = s.prompt_tokens
        cache = kv[:3] + (n,) + kv[4:]
        return (torch.randint(0, t.vocab_size, (1, 1), generator=g), torch.tensor([n]),
                torch.randn(cache, generator=g), torch.randn(cache, generator=g))

    def denoise_inputs(s, g):
        grid = s.latent_grid(config)
        b, n = s.batch, grid.num_tokens
        timestep = torch.full((b, n), 500.0)
        timestep[:, : grid.tokens_per_frame] = 0.0  # the conditioned first frame
        return (torch.randn(b, n, grid.channels * grid.patch ** 2 * grid.patch_t, generator=g),
                torch.randn(b, a.num_tokens, tr.caption_channels, generator=g),
                torch.ones(b, a.num_tokens, dtype=torch.long), timestep)

    def vae_inputs(s, g):
        grid = s.latent_grid(config)
        return (torch.randn(1, grid.channels, grid.frames, grid.height, grid.width, generator=g),)

    def fixed(sampler):
        def profiler(s):
            shapes = [tuple(x.shape) for x in sampler(s, torch.Generator().manual_seed(0))]
            return {f"input{i}": (sh, sh, sh) for i, sh in enumerate(shapes)}
        return profiler

    def named(profiler, names):
        def renamed(s):
            return dict(zip(names, profiler(s).values()))
        return renamed

    specs = [
        ExportSpec("vision", "vision_tower", ("pixel_values", "grid_thw"), ("image_embeds",),
                   {"pixel_values": {0: "patches"}, "grid_thw": {0: "images"}, "image_embeds": {0: "visual_tokens"}},
                   lambda m, s: VisionStage(m.vision_tower), vision_inputs,
                   lambda s: {"pixel_values": ((per_image, patch_dim), (per_image, patch_dim),
                                               (per_image * config.processor.max_images, patch_dim)),
                              "grid_thw": ((1, 3), (1, 3), (config.processor.max_images, 3))}),
        ExportSpec("prefill", "backbone", ("embeds", "position_ids"), ("logits", "world_latent", "keys", "values"),
                   {"embeds": {1: "prompt"}, "position_ids": {2: "prompt"}, "keys": {3: "prompt"},
                    "values": {3: "prompt"}},
                   lambda m, s: PrefillStage(m.backbone), prefill_inputs,
                   lambda s: {"embeds": ((1, 1, t.hidden_size), (1, s.prompt_tokens, t.hidden_size),
                                         (1, max_prompt, t.hidden_size)),
                              "position_ids": ((3, 1, 1), (3, 1, s.prompt_tokens), (3, 1, max_prompt))}),
        ExportSpec("decode", "backbone", ("token_ids", "position", "keys", "values"),
                   ("logits", "present_keys", "present_values"),
                   {"keys": {3: "past"}, "values": {3: "past"}, "present_keys": {3: "present"},
                    "present_values": {3: "present"}},
                   lambda m, s: DecodeStage(m.backbone), decode_inputs,
                   lambda s: {name: (kv[:3] + (1,) + kv[4:], kv[:3] + (s.prompt_tokens,) + kv[4:],
                                     kv[:3] + (max_prompt + s.max_new_tokens,) + kv[4:])
                              for name in ("keys", "values")}),
        ExportSpec("adapter", "adapter", ("world_latent",), ("conditioning", "conditioning_mask"), {},
                   lambda m, s: AdapterStage(m.adapter),
                   lambda s, g: (torch.randn(1, a.num_query_tokens, t.hidden_size, generator=g),),
                   named(fixed(lambda s, g: (torch.zeros(1, a.num_query_tokens, t.hidden_size),)),
                         ("world_latent",))),
        ExportSpec("denoise", "video_decoder", ("latents", "conditioning", "conditioning_mask", "timestep"),
                   ("velocity",), {},
                   lambda m, s: DenoiseStage(m.video_decoder, s.latent_grid(config), s.rope_scale(config)),
                   denoise_inputs,
                   named(fixed(denoise_inputs), ("latents", "conditioning", "conditioning_mask", "timestep"))),
        ExportSpec("vae_decode", "vae", ("latents",), ("video",), {},
                   lambda m, s: VAEDecodeStage(m.vae), vae_inputs, named(fixed(vae_inputs), ("latents",))),
    ]
    return {spec.name: spec for spec in specs}


__all__ = ["BuildShape", "ExportSpec", "export_specs"]
