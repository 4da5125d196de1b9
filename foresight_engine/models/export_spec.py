"""Export specs: for each stage, its tensor-only wrapper, input/output names, dynamic axes, sample inputs for a
shape and a min/opt/max shape profile (what TensorRT's optimization profiles and the ONNX export consume).
`export_specs(config)` is also the one vocabulary of stage names (`STAGES`); the video stages (`denoise`,
`vae_decode`) come from the config's decoder family (`families.py`), `spatial` only with the hybrid encoder on.

The `denoise` stage has two forms: one plain transformer forward (`DenoiseStage`: what ONNX and TensorRT build, run
by the loop as a velocity), or, with `export_specs(config, denoise_ops=...)`, the static plan's whole step
(`static_velocity.StaticStep`: velocity + guidance + Euler update in one graph, the step index a tensor, the
number of steps a dynamic axis), which the compile backend builds ahead of time.

Model code only: no onnx, tensorrt or builders imports here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from .families import family
from .kv_cache import default_length
from .stages import AdapterStage, DecodeStage, PrefillStage, SpatialStage, VAEDecodeStage, VisionStage
from .video_geometry import VideoGeometry
from .vision_tower import VisionLayout, image_grid

Shape = tuple[int, ...]
STAGES = ("vision", "spatial", "prefill", "decode", "adapter", "denoise", "vae_decode")  # in run order
PROMPT_TEXT_TOKENS = 32  # the chat template and a one-sentence prompt (Qwen2.5's tokenizer), besides the images


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
    cache_len: int | None = None  # KV cache slots the decode stage is built for (None: the config's default)
    image_height: int | None = None  # the input images the vision stage is built for (None: the video's size)
    image_width: int | None = None

    @classmethod
    def for_config(cls, config: ModelConfig, height: int | None = None, width: int | None = None,
                   num_frames: int | None = None, *, image_size: tuple[int, int] | None = None,
                   images: int = 1, prompt_tokens: int | None = None) -> "BuildShape":
        """The build shape of a request at the preset's defaults (or the given sizes). The prefill's `opt` prompt
        length is that request's: `images` images of `image_size` (default: the video's size, the world model's
        own frames) plus `PROMPT_TEXT_TOKENS`, unless `prompt_tokens` is given."""
        gen = config.generation
        height, width = height or gen.height, width or gen.width
        image_height, image_width = image_size or (height, width)
        if prompt_tokens is None:
            _, h, w = image_grid(config, image_height, image_width)
            visual = h * w // config.vision.spatial_merge_size ** 2
            prompt_tokens = min(config.processor.max_prompt_tokens, images * visual + PROMPT_TEXT_TOKENS)
        shape = cls(height=height, width=width, num_frames=num_frames or gen.num_frames, frame_rate=gen.frame_rate,
                    max_new_tokens=gen.max_new_tokens, prompt_tokens=prompt_tokens, image_height=image_height,
                    image_width=image_width)
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
        for name in ("image_height", "image_width"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"build shape {name}={value} must be a positive number of pixels")
        if not 0 < self.prompt_tokens <= config.processor.max_prompt_tokens:
            raise ConfigError(f"build shape prompt_tokens={self.prompt_tokens} must be in "
                              f"[1, {config.processor.max_prompt_tokens}] (the preset's prompt limit)")

    @property
    def batch(self) -> int:
        return 2 if self.guidance else 1

    def geometry(self, config: ModelConfig) -> VideoGeometry:
        return VideoGeometry.of(config, self.height, self.width, self.num_frames, self.frame_rate)

    def cache_length(self, config: ModelConfig) -> int:
        return self.cache_len or default_length(config)

    def image_grid(self, config: ModelConfig) -> tuple[int, int, int]:
        """The patch grid of one input image of the built size (what the vision stage is built for)."""
        return image_grid(config, self.image_height or self.height, self.image_width or self.width)

    def vision_layout(self, config: ModelConfig) -> VisionLayout:
        return VisionLayout.of(config.vision, self.image_grid(config))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
    # inputs kept in the component's dtype, never copied to fp32: KV caches, the static plan's tables
    cache_inputs: tuple[str, ...] = ()

    def sample_inputs(self, shape: BuildShape, seed: int = 0,
                      cache_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ...]:
        inputs = self.sampler(shape, torch.Generator().manual_seed(seed))
        return tuple(x.to(cache_dtype) if name in self.cache_inputs else x
                     for name, x in zip(self.input_names, inputs))

    def profile(self, shape: BuildShape) -> dict[str, tuple[Shape, Shape, Shape]]:
        return self.profiler(shape)

    def dynamic_shapes(self) -> tuple[Any, ...]:
        """torch.export dynamic shapes from the named dynamic axes (one `Dim` per axis name, shared by inputs)."""
        from torch.export import Dim
        dims: dict[str, Any] = {}
        return tuple({axis: dims.setdefault(label, Dim.DYNAMIC) for axis, label in self.dynamic_axes[n].items()}
                     if n in self.dynamic_axes else None for n in self.input_names)


def vae_stage(model, config: ModelConfig) -> VAEDecodeStage:
    """The `vae_decode` stage wrapper of any family (refused for a VAE whose decode draws noise)."""
    if model.vae.timestep_conditioned:
        raise ConfigError("the VAE decode stage is built for VAEs without timestep conditioning (its decode draws "
                          "noise); this VAE has timestep_conditioning=True: build with --stages excluding vae_decode")
    return VAEDecodeStage(model.vae, config.generation.decode_timestep)


def fixed_profile(sampler: Callable[[BuildShape, torch.Generator], tuple[torch.Tensor, ...]],
                  names: tuple[str, ...]) -> Callable[[BuildShape], dict[str, tuple[Shape, Shape, Shape]]]:
    """The profile of a fixed-shape stage: min = opt = max = its sample inputs' shapes."""
    def profiler(s):
        shapes = [tuple(x.shape) for x in sampler(s, torch.Generator().manual_seed(0))]
        return {name: (sh, sh, sh) for name, sh in zip(names, shapes)}
    return profiler


def vae_decode_spec(config: ModelConfig) -> ExportSpec:
    """`vae_decode`: latents [1, C, f, h, w] -> video, for every family's VAE component."""
    def vae_inputs(s, g):
        return (torch.randn(s.geometry(config).latent_shape, generator=g),)
    return ExportSpec("vae_decode", "vae", ("latents",), ("video",), {}, lambda m, s: vae_stage(m, config),
                      vae_inputs, fixed_profile(vae_inputs, ("latents",)))


def export_specs(config: ModelConfig, denoise_ops: frozenset[str] | None = None) -> dict[str, ExportSpec]:
    """Every stage of the stack, in run order (`STAGES`); `denoise_ops` (the custom ops the blocks call) selects
    the family's static whole-step form of `denoise` (`family.static_step_spec`)."""
    v, t, a = config.vision, config.text, config.adapter
    patch_dim = 3 * v.temporal_patch_size * v.patch_size ** 2
    max_prompt = config.processor.max_prompt_tokens
    past = 3  # cached prefix of the prefill's sample inputs (torch.export specialises sizes 0 and 1)

    def kv(length: int) -> Shape:
        return (t.num_hidden_layers, 1, t.num_key_value_heads, length, t.head_dim)

    def vision_inputs(s, g):
        layout = s.vision_layout(config)  # host tables of the built image grid: fixed shapes
        return (torch.randn(layout.patches, patch_dim, generator=g), *layout.tensors())

    def prefill_inputs(s, g):
        n = s.prompt_tokens
        return (torch.randn(1, n, t.hidden_size, generator=g),
                torch.arange(past, past + n).view(1, 1, n).expand(3, 1, n).contiguous(),
                torch.randn(kv(past), generator=g), torch.randn(kv(past), generator=g))

    def decode_inputs(s, g):
        n, cache = s.prompt_tokens, kv(s.cache_length(config))
        return (torch.randint(0, t.vocab_size, (1, 1), generator=g), torch.tensor([n]),
                torch.randn(cache, generator=g), torch.randn(cache, generator=g), torch.tensor(n))

    hybrid = config.spatial_encoder
    adapter_names = ("world_latent",) + (("spatial_features",) if hybrid else ())

    def adapter_inputs(s, g):
        world = (torch.randn(1, a.num_query_tokens, t.hidden_size, generator=g),)
        return world + ((torch.randn(1, hybrid.num_patches, hybrid.hidden_size, generator=g),) if hybrid else ())

    def spatial_inputs(s, g):
        return (torch.randn(1, 3, hybrid.crop_size, hybrid.crop_size, generator=g),)

    vision_names = ("pixel_values", *VisionLayout.TENSORS)
    decode_names = ("token_ids", "position", "keys", "values", "slot")
    specs = [
        ExportSpec("vision", "vision_tower", vision_names, ("image_embeds",), {},
                   lambda m, s: VisionStage.for_layout(m.vision_tower, s.vision_layout(config)), vision_inputs,
                   fixed_profile(vision_inputs, vision_names)),
        ExportSpec("prefill", "backbone", ("embeds", "position_ids", "past_keys", "past_values"),
                   ("logits", "world_latent", "keys", "values"),
                   {"embeds": {1: "prompt"}, "position_ids": {2: "prompt"}, "past_keys": {3: "past"},
                    "past_values": {3: "past"}, "keys": {3: "prompt"}, "values": {3: "prompt"}},
                   lambda m, s: PrefillStage(m.backbone), prefill_inputs,
                   lambda s: {"embeds": ((1, 1, t.hidden_size), (1, s.prompt_tokens, t.hidden_size),
                                         (1, max_prompt, t.hidden_size)),
                              "position_ids": ((3, 1, 1), (3, 1, s.prompt_tokens), (3, 1, max_prompt)),
                              **{name: (kv(0), kv(0), kv(max_prompt - 1)) for name in ("past_keys", "past_values")}},
                   cache_inputs=("past_keys", "past_values")),
        ExportSpec("decode", "backbone", decode_names, ("logits", "new_keys", "new_values"), {},
                   lambda m, s: DecodeStage(m.backbone), decode_inputs, fixed_profile(decode_inputs, decode_names),
                   cache_inputs=("keys", "values")),
        ExportSpec("adapter", "adapter", adapter_names, ("conditioning", "conditioning_mask"), {},
                   lambda m, s: AdapterStage(m.adapter), adapter_inputs,
                   fixed_profile(adapter_inputs, adapter_names)),
        *family(config).export_specs(config),
    ]
    if hybrid:
        specs.insert(1, ExportSpec("spatial", "spatial_encoder", ("pixel_values",), ("spatial_features",), {},
                                   lambda m, s: SpatialStage(m.spatial_encoder), spatial_inputs,
                                   fixed_profile(spatial_inputs, ("pixel_values",))))
    specs = {spec.name: spec for spec in specs}
    if denoise_ops is not None:
        static_step_spec = family(config).static_step_spec
        if static_step_spec is None:
            raise ConfigError(f"the {config.decoder.family} decoder family has no static whole-step denoise stage "
                              f"(denoise_ops={sorted(denoise_ops)})")
        specs["denoise"] = static_step_spec(config, denoise_ops)
    return specs


def denoise_ops_of(options: "dict[str, Any] | Any") -> frozenset[str] | None:
    """The custom ops a built static `denoise` step calls, from an artifact's backend options (None: the plain
    one-forward form)."""
    ops = options.get("denoise_ops")
    return None if ops is None else frozenset(ops)


__all__ = ["BuildShape", "ExportSpec", "STAGES", "denoise_ops_of", "export_specs", "fixed_profile", "vae_decode_spec",
           "vae_stage"]
