"""One typed config tree (frozen dataclasses) for the whole model stack; round-trips through JSON.

A preset is data: `tiny`, `small` and `full` are instances of `ModelConfig`, never branches in model code.
Every dataclass validates itself in `__post_init__` and names the offending value.

The video decoder is one discriminated section, `decoder`: `LTXDecoderConfig` (`family: "ltx"`) or
`Hunyuan15DecoderConfig` (`family: "hunyuan15"`); its JSON carries `family`, which picks the class back. The
optional `spatial_encoder` section (DINOv2, the hybrid encoder) is `null` when off.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError, UnknownPresetError


def _positive(owner: str, **values: int | float) -> None:
    for name, value in values.items():
        if not value > 0:
            raise ConfigError(f"{owner}.{name} must be > 0, got {value!r}")


@dataclass(frozen=True)
class VisionConfig:
    """Qwen2.5-VL vision transformer (`Qwen2_5_VLVisionConfig`)."""

    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    fullatt_block_indexes: tuple[int, ...]
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int = 112

    def __post_init__(self) -> None:
        _positive("vision", depth=self.depth, hidden_size=self.hidden_size, num_heads=self.num_heads,
                  out_hidden_size=self.out_hidden_size, patch_size=self.patch_size)
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"vision.hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        bad = [i for i in self.fullatt_block_indexes if not 0 <= i < self.depth]
        if bad:
            raise ConfigError(f"vision.fullatt_block_indexes {bad} outside [0, depth={self.depth})")


@dataclass(frozen=True)
class TextConfig:
    """Qwen2.5-VL language model (`Qwen2_5_VLTextConfig`)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    mrope_section: tuple[int, int, int]
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def __post_init__(self) -> None:
        _positive("text", hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                  num_attention_heads=self.num_attention_heads, vocab_size=self.vocab_size)
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"text.hidden_size={self.hidden_size} not divisible by heads={self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"text.num_key_value_heads={self.num_key_value_heads} must divide "
                              f"num_attention_heads={self.num_attention_heads}")
        if 2 * sum(self.mrope_section) != self.head_dim:
            raise ConfigError(f"text.mrope_section={list(self.mrope_section)} must sum to head_dim/2="
                              f"{self.head_dim // 2}")


@dataclass(frozen=True)
class ProcessorConfig:
    """Image pre-processing (transformers' `Qwen2VLImageProcessor`) and prompt limits."""

    min_pixels: int
    max_pixels: int
    max_images: int = 4
    max_prompt_tokens: int = 2048
    tokenizer_vocab_size: int = 0  # 0: the tokenizer comes from a folder (real weights), not built here

    def __post_init__(self) -> None:
        _positive("processor", min_pixels=self.min_pixels, max_pixels=self.max_pixels, max_images=self.max_images,
                  max_prompt_tokens=self.max_prompt_tokens)
        if self.min_pixels > self.max_pixels:
            raise ConfigError(f"processor.min_pixels={self.min_pixels} > max_pixels={self.max_pixels}")


@dataclass(frozen=True)
class AdapterConfig:
    """Cross-attention query adapter: world latent [B, Q, D_vlm] -> conditioning [B, L, C]."""

    num_query_tokens: int  # Q, the learned queries appended to the prompt in the backbone
    num_tokens: int  # L, conditioning tokens handed to the video transformer
    width: int
    num_layers: int
    num_heads: int
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        _positive("adapter", num_query_tokens=self.num_query_tokens, num_tokens=self.num_tokens, width=self.width,
                  num_layers=self.num_layers, num_heads=self.num_heads, mlp_ratio=self.mlp_ratio)
        if self.width % self.num_heads:
            raise ConfigError(f"adapter.width={self.width} not divisible by num_heads={self.num_heads}")


@dataclass(frozen=True)
class TransformerConfig:
    """LTX-Video diffusion transformer (`LTXVideoTransformer3DModel`)."""

    in_channels: int
    num_attention_heads: int
    attention_head_dim: int
    num_layers: int
    caption_channels: int
    patch_size: int = 1
    patch_size_t: int = 1

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def __post_init__(self) -> None:
        _positive("transformer", in_channels=self.in_channels, num_attention_heads=self.num_attention_heads,
                  attention_head_dim=self.attention_head_dim, num_layers=self.num_layers,
                  caption_channels=self.caption_channels)


@dataclass(frozen=True)
class VAEConfig:
    """LTX-Video causal video VAE (`AutoencoderKLLTXVideo`)."""

    latent_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: tuple[int, ...]
    spatio_temporal_scaling: tuple[bool, ...]
    decoder_block_out_channels: tuple[int, ...]
    decoder_layers_per_block: tuple[int, ...]
    decoder_spatio_temporal_scaling: tuple[bool, ...]
    decoder_inject_noise: tuple[bool, ...]
    patch_size: int = 4
    patch_size_t: int = 1

    @property
    def spatial_compression(self) -> int:
        return self.patch_size * 2 ** sum(self.spatio_temporal_scaling)

    @property
    def temporal_compression(self) -> int:
        return self.patch_size_t * 2 ** sum(self.spatio_temporal_scaling)

    def __post_init__(self) -> None:
        _positive("vae", latent_channels=self.latent_channels, patch_size=self.patch_size)
        n = len(self.block_out_channels)
        if len(self.spatio_temporal_scaling) != n or len(self.layers_per_block) != n + 1:
            raise ConfigError(f"vae: block_out_channels has {n} entries; spatio_temporal_scaling needs {n} "
                              f"(got {len(self.spatio_temporal_scaling)}) and layers_per_block {n + 1} "
                              f"(got {len(self.layers_per_block)})")
        m = len(self.decoder_block_out_channels)
        if len(self.decoder_spatio_temporal_scaling) != m or len(self.decoder_layers_per_block) != m + 1 \
                or len(self.decoder_inject_noise) != m + 1:
            raise ConfigError(f"vae: decoder lists disagree with decoder_block_out_channels ({m} entries)")
        if sum(self.spatio_temporal_scaling) != sum(self.decoder_spatio_temporal_scaling):
            raise ConfigError("vae: encoder and decoder must scale the same number of times")


@dataclass(frozen=True)
class SchedulerConfig:
    """Flow-matching Euler schedule (`FlowMatchEulerDiscreteScheduler`), LTX-Video's dynamic shift."""

    base_image_seq_len: int = 1024
    max_image_seq_len: int = 4096
    base_shift: float = 0.95
    max_shift: float = 2.05
    num_train_timesteps: int = 1000


class _DecoderSteps:
    """Frame-size steps of a decoder section (its `vae` and `transformer`): sides are multiples of `spatial_step`
    (VAE compression x patch), frame counts `temporal_step * k + 1`."""

    @property
    def spatial_step(self) -> int:
        return self.vae.spatial_compression * self.transformer.patch_size

    @property
    def temporal_step(self) -> int:
        return self.vae.temporal_compression * self.transformer.patch_size_t


@dataclass(frozen=True)
class LTXDecoderConfig(_DecoderSteps):
    """LTX-Video: diffusion transformer, causal video VAE and its dynamic-shift flow-matching schedule."""

    transformer: TransformerConfig
    vae: VAEConfig
    scheduler: SchedulerConfig = SchedulerConfig()
    family: Literal["ltx"] = "ltx"

    def __post_init__(self) -> None:
        _family(self, "ltx")
        if self.vae.latent_channels != self.transformer.in_channels:
            raise ConfigError(f"vae.latent_channels={self.vae.latent_channels} must equal "
                              f"transformer.in_channels={self.transformer.in_channels}")

    @property
    def conditioning_channels(self) -> int:
        """Width of the conditioning tokens the adapter hands over (T5's in the original model)."""
        return self.transformer.caption_channels


@dataclass(frozen=True)
class Hunyuan15TransformerConfig:
    """HunyuanVideo-1.5 image-to-video transformer (`HunyuanVideo15Transformer3DModel`); its input channels are
    the latents, the conditioning frame's latents and a mask channel (2 * latent + 1)."""

    num_attention_heads: int
    attention_head_dim: int
    num_layers: int
    text_embed_dim: int  # the conditioning width (Qwen2.5-VL-7B's hidden size in the original model)
    rope_axes_dim: tuple[int, int, int]  # RoPE channels per axis (frames, height, width); sums to the head dim
    num_refiner_layers: int = 2
    mlp_ratio: float = 4.0
    patch_size: int = 1
    patch_size_t: int = 1
    text_embed_2_dim: int = 1472  # ByT5 glyph embeddings (always masked here)
    image_embed_dim: int = 1152  # SigLIP image embeddings (zero here: the first frame conditions through latents)
    rope_theta: float = 256.0
    target_size: int = 640  # pixel side of the reference pipeline's resolution buckets

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def __post_init__(self) -> None:
        _positive("transformer", num_attention_heads=self.num_attention_heads,
                  attention_head_dim=self.attention_head_dim, num_layers=self.num_layers,
                  text_embed_dim=self.text_embed_dim, patch_size=self.patch_size, patch_size_t=self.patch_size_t)
        if sum(self.rope_axes_dim) != self.attention_head_dim or any(d % 2 for d in self.rope_axes_dim):
            raise ConfigError(f"transformer.rope_axes_dim={list(self.rope_axes_dim)} must be even and sum to "
                              f"attention_head_dim={self.attention_head_dim}")


@dataclass(frozen=True)
class Hunyuan15VAEConfig:
    """HunyuanVideo-1.5 causal video VAE (`AutoencoderKLHunyuanVideo15`)."""

    latent_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    spatial_compression: int = 16
    temporal_compression: int = 4
    scaling_factor: float = 1.03682

    def __post_init__(self) -> None:
        _positive("vae", latent_channels=self.latent_channels, layers_per_block=self.layers_per_block,
                  spatial_compression=self.spatial_compression, temporal_compression=self.temporal_compression,
                  scaling_factor=self.scaling_factor)
        for name in ("spatial_compression", "temporal_compression"):
            value = getattr(self, name)
            if value & (value - 1):
                raise ConfigError(f"vae.{name}={value} must be a power of two")
        downsamples = self.spatial_compression.bit_length() - 1
        if len(self.block_out_channels) <= downsamples or self.temporal_compression > self.spatial_compression:
            raise ConfigError(f"vae: block_out_channels={list(self.block_out_channels)} needs more than "
                              f"log2(spatial_compression)={downsamples} entries, and temporal_compression="
                              f"{self.temporal_compression} may not exceed spatial_compression")
        if self.block_out_channels[-1] % (2 * self.latent_channels):
            raise ConfigError(f"vae.block_out_channels[-1]={self.block_out_channels[-1]} must be a multiple of "
                              f"2 * latent_channels={2 * self.latent_channels}")


@dataclass(frozen=True)
class Hunyuan15SchedulerConfig:
    """Flow-matching Euler schedule with a fixed shift (`FlowMatchEulerDiscreteScheduler`): 7 for the 480p
    step-distilled image-to-video model, 5 for the 50-step one."""

    shift: float = 7.0
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        _positive("scheduler", shift=self.shift, num_train_timesteps=self.num_train_timesteps)


@dataclass(frozen=True)
class Hunyuan15DecoderConfig(_DecoderSteps):
    """HunyuanVideo-1.5 image-to-video: transformer, VAE and schedule."""

    transformer: Hunyuan15TransformerConfig
    vae: Hunyuan15VAEConfig
    scheduler: Hunyuan15SchedulerConfig = Hunyuan15SchedulerConfig()
    family: Literal["hunyuan15"] = "hunyuan15"

    def __post_init__(self) -> None:
        _family(self, "hunyuan15")

    @property
    def conditioning_channels(self) -> int:
        return self.transformer.text_embed_dim


DecoderConfig = LTXDecoderConfig | Hunyuan15DecoderConfig
DECODER_FAMILIES = ("ltx", "hunyuan15")  # the `decoder.family` values, one per class of DecoderConfig


def _family(section, expected: str) -> None:
    if section.family != expected:
        raise ConfigError(f"decoder.family={section.family!r} does not match {type(section).__name__} "
                          f"(family {expected!r})")


@dataclass(frozen=True)
class SpatialEncoderConfig:
    """DINOv2 (transformers' `Dinov2Model`): patch features of the conditioning image, fused with the world latent
    in the adapter (the hybrid encoder). `image_size` sizes its position table; the image is resized (shortest
    edge `resize_size`), center-cropped to `crop_size` and normalised (ImageNet mean/std), as `BitImageProcessor`."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    mlp_ratio: int = 4
    patch_size: int = 14
    image_size: int = 224
    crop_size: int = 224
    resize_size: int = 256
    layer_norm_eps: float = 1e-6
    layerscale_value: float = 1.0
    use_swiglu_ffn: bool = False
    image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    image_std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def num_patches(self) -> int:
        """Patch tokens per image (the features the adapter attends to besides the world latent)."""
        return (self.crop_size // self.patch_size) ** 2

    def __post_init__(self) -> None:
        _positive("spatial_encoder", hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                  num_attention_heads=self.num_attention_heads, patch_size=self.patch_size,
                  image_size=self.image_size, crop_size=self.crop_size, resize_size=self.resize_size)
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"spatial_encoder.hidden_size={self.hidden_size} not divisible by "
                              f"num_attention_heads={self.num_attention_heads}")
        if self.crop_size % self.patch_size or self.crop_size > self.resize_size:
            raise ConfigError(f"spatial_encoder.crop_size={self.crop_size} must be a multiple of patch_size="
                              f"{self.patch_size} and <= resize_size={self.resize_size}")


@dataclass(frozen=True)
class RequestLimits:
    """The largest request an engine accepts (`Engine.predict` refuses anything beyond, before any model runs).

    Sizes bound the work of one uninterruptible call (a transformer block attends over every latent token, a VAE
    block convolves the whole clip), so they also bound how long a cancel takes; `max_cost` bounds the whole
    request: latent tokens x steps x CFG batch (the transformer's token passes) + latent tokens (the VAE decode) +
    text tokens. `Engine(max_request_cost=...)` overrides it per engine."""

    max_side: int = 1280  # height and width, pixels
    max_frames: int = 257
    max_inference_steps: int = 200
    max_new_tokens: int = 4096
    max_frame_rate: int = 240  # frames per second of the video (and its RoPE time scale)
    max_guidance_scale: float = 30.0
    max_image_pixels: int = 2**25  # an input image's width x height (33.5 M: 8K x 4K), checked before decoding
    max_cost: int = 3_000_000  # token passes

    def __post_init__(self) -> None:
        _positive("generation.limits", max_side=self.max_side, max_frames=self.max_frames,
                  max_inference_steps=self.max_inference_steps, max_new_tokens=self.max_new_tokens,
                  max_frame_rate=self.max_frame_rate, max_image_pixels=self.max_image_pixels, max_cost=self.max_cost)
        if not 1.0 <= self.max_guidance_scale < float("inf"):
            raise ConfigError(f"generation.limits.max_guidance_scale={self.max_guidance_scale!r} must be a finite "
                              "number >= 1")


@dataclass(frozen=True)
class GenerationConfig:
    """Per-request defaults; `Engine.predict` keyword arguments override them, within `limits`."""

    height: int
    width: int
    num_frames: int
    num_inference_steps: int
    guidance_scale: float = 1.0
    max_new_tokens: int = 16
    frame_rate: int = 24
    decode_timestep: float = 0.0
    limits: RequestLimits = field(default_factory=RequestLimits)

    def __post_init__(self) -> None:
        _positive("generation", height=self.height, width=self.width, num_frames=self.num_frames,
                  num_inference_steps=self.num_inference_steps, frame_rate=self.frame_rate)
        lim = self.limits
        over = {name: (value, limit) for name, value, limit in (
            ("height", self.height, lim.max_side), ("width", self.width, lim.max_side),
            ("num_frames", self.num_frames, lim.max_frames),
            ("num_inference_steps", self.num_inference_steps, lim.max_inference_steps),
            ("max_new_tokens", self.max_new_tokens, lim.max_new_tokens),
            ("frame_rate", self.frame_rate, lim.max_frame_rate),
            ("guidance_scale", self.guidance_scale, lim.max_guidance_scale)) if value > limit}
        if over:
            raise ConfigError("generation defaults beyond generation.limits: " + ", ".join(
                f"{name}={value} > {limit}" for name, (value, limit) in over.items()))


@dataclass(frozen=True)
class ModelConfig:
    """The whole GLP stack. `name` is the preset it came from (or a user's label)."""

    name: str
    vision: VisionConfig
    text: TextConfig
    processor: ProcessorConfig
    adapter: AdapterConfig
    decoder: DecoderConfig
    generation: GenerationConfig
    spatial_encoder: SpatialEncoderConfig | None = None  # the hybrid encoder's DINOv2; None: off

    def __post_init__(self) -> None:
        if self.vision.out_hidden_size != self.text.hidden_size:
            raise ConfigError(f"vision.out_hidden_size={self.vision.out_hidden_size} must equal "
                              f"text.hidden_size={self.text.hidden_size}")
        if not isinstance(self.decoder, (LTXDecoderConfig, Hunyuan15DecoderConfig)):
            raise ConfigError(f"decoder must be one of {list(DECODER_FAMILIES)}'s sections, got "
                              f"{type(self.decoder).__name__}")

    @property
    def spatial_step(self) -> int:
        """Frame sides must be multiples of this: VAE compression x transformer patch."""
        return self.decoder.spatial_step

    @property
    def temporal_step(self) -> int:
        """Frame counts must be `temporal_step * k + 1`."""
        return self.decoder.temporal_step

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        return _build(cls, data, "config")

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def _build(tp: Any, value: Any, where: str) -> Any:
    """Rebuild a typed value from its JSON form, naming the path of anything that does not fit."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object for {tp.__name__}, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown field(s) {unknown} for {tp.__name__}")
        return tp(**{k: _build(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    origin = typing.get_origin(tp)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0]
        return tuple(_build(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        return _build_union(typing.get_args(tp), value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _build_union(options: tuple, value: Any, where: str) -> Any:
    """`X | None` and discriminated sections: a dataclass picked by the JSON's `family` (the decoder)."""
    if value is None and type(None) in options:
        return None
    classes = [c for c in options if dataclasses.is_dataclass(c)]
    if not classes:
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected an object, got {value!r}")
    if len(classes) == 1:
        return _build(classes[0], value, where)
    families = {c.family: c for c in classes}  # the default of each class's `family` field
    if value.get("family") not in families:
        raise ConfigError(f"{where}.family={value.get('family')!r}: choose one of {sorted(families)}")
    return _build(families[value["family"]], value, where)


# --------------------------------------------------------------------------------------------- presets
def _tiny() -> ModelConfig:
    return ModelConfig(
        name="tiny",
        vision=VisionConfig(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=128,
                            fullatt_block_indexes=(1,)),
        text=TextConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=256, vocab_size=512, mrope_section=(4, 6, 6),
                        max_position_embeddings=4096),
        processor=ProcessorConfig(min_pixels=56 * 56, max_pixels=56 * 56, max_images=4, max_prompt_tokens=512,
                                  tokenizer_vocab_size=512),
        adapter=AdapterConfig(num_query_tokens=8, num_tokens=16, width=64, num_layers=2, num_heads=4),
        decoder=LTXDecoderConfig(
            transformer=TransformerConfig(in_channels=8, num_attention_heads=2, attention_head_dim=16, num_layers=2,
                                          caption_channels=64),
            vae=VAEConfig(latent_channels=8, block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
                          spatio_temporal_scaling=(True, True, False, False),
                          decoder_block_out_channels=(8, 8, 8, 8), decoder_layers_per_block=(1, 1, 1, 1, 1),
                          decoder_spatio_temporal_scaling=(True, True, False, False),
                          decoder_inject_noise=(False, False, False, False, False), patch_size=1)),
        generation=GenerationConfig(height=64, width=64, num_frames=9, num_inference_steps=4, max_new_tokens=8,
                                    limits=RequestLimits(max_side=128, max_frames=33, max_cost=1_000_000)),
    )


def _small() -> ModelConfig:
    return ModelConfig(
        name="small",
        vision=VisionConfig(depth=4, hidden_size=256, intermediate_size=1024, num_heads=4, out_hidden_size=512,
                            fullatt_block_indexes=(1, 3)),
        text=TextConfig(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                        intermediate_size=1536, vocab_size=2048, mrope_section=(8, 12, 12),
                        max_position_embeddings=8192),
        processor=ProcessorConfig(min_pixels=112 * 112, max_pixels=112 * 112, max_images=4, max_prompt_tokens=1024,
                                  tokenizer_vocab_size=2048),
        adapter=AdapterConfig(num_query_tokens=32, num_tokens=64, width=256, num_layers=2, num_heads=4),
        decoder=LTXDecoderConfig(
            transformer=TransformerConfig(in_channels=32, num_attention_heads=8, attention_head_dim=64, num_layers=8,
                                          caption_channels=512),
            vae=VAEConfig(latent_channels=32, block_out_channels=(32, 64, 64, 64), layers_per_block=(1, 1, 1, 1, 1),
                          spatio_temporal_scaling=(True, True, True, False),
                          decoder_block_out_channels=(32, 64, 64, 64), decoder_layers_per_block=(1, 1, 1, 1, 1),
                          decoder_spatio_temporal_scaling=(True, True, True, False),
                          decoder_inject_noise=(False, False, False, False, False), patch_size=2)),
        generation=GenerationConfig(height=256, width=256, num_frames=17, num_inference_steps=8, max_new_tokens=32,
                                    limits=RequestLimits(max_side=512, max_frames=65, max_cost=1_000_000)),
    )


def _full() -> ModelConfig:
    # Qwen2.5-VL-7B-Instruct and LTX-Video 2B (0.9.x) as published; the adapter is sized to ~10M parameters.
    return ModelConfig(
        name="full",
        vision=VisionConfig(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                            fullatt_block_indexes=(7, 15, 23, 31)),
        text=TextConfig(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                        intermediate_size=18944, vocab_size=152064, mrope_section=(16, 24, 24),
                        max_position_embeddings=128000),
        processor=ProcessorConfig(min_pixels=3136, max_pixels=448 * 448, max_images=8, max_prompt_tokens=8192),
        adapter=AdapterConfig(num_query_tokens=64, num_tokens=128, width=512, num_layers=2, num_heads=8),
        decoder=LTXDecoderConfig(
            transformer=TransformerConfig(in_channels=128, num_attention_heads=32, attention_head_dim=64,
                                          num_layers=28, caption_channels=4096),
            vae=VAEConfig(latent_channels=128, block_out_channels=(128, 256, 512, 512),
                          layers_per_block=(4, 3, 3, 3, 4), spatio_temporal_scaling=(True, True, True, False),
                          decoder_block_out_channels=(128, 256, 512, 512), decoder_layers_per_block=(4, 3, 3, 3, 4),
                          decoder_spatio_temporal_scaling=(True, True, True, False),
                          decoder_inject_noise=(False, False, False, False, False), patch_size=4)),
        generation=GenerationConfig(height=512, width=768, num_frames=121, num_inference_steps=8, max_new_tokens=128),
    )


# HunyuanVideo-1.5 presets: the same VLM and adapter as their LTX counterparts, the decoder swapped.
def _tiny_hunyuan15() -> ModelConfig:
    return _tiny().replace(
        name="tiny-hunyuan15",
        decoder=Hunyuan15DecoderConfig(
            transformer=Hunyuan15TransformerConfig(num_attention_heads=2, attention_head_dim=16, num_layers=2,
                                                   num_refiner_layers=1, text_embed_dim=64, rope_axes_dim=(4, 6, 6),
                                                   text_embed_2_dim=8, image_embed_dim=8, target_size=64),
            vae=Hunyuan15VAEConfig(latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                                   spatial_compression=8, temporal_compression=4),
            scheduler=Hunyuan15SchedulerConfig(shift=5.0)))


def _small_hunyuan15() -> ModelConfig:
    return _small().replace(
        name="small-hunyuan15",
        decoder=Hunyuan15DecoderConfig(
            transformer=Hunyuan15TransformerConfig(num_attention_heads=8, attention_head_dim=64, num_layers=6,
                                                   text_embed_dim=512, rope_axes_dim=(16, 24, 24),
                                                   text_embed_2_dim=64, image_embed_dim=64, target_size=256),
            vae=Hunyuan15VAEConfig(latent_channels=16, block_out_channels=(32, 64, 64, 64, 64), layers_per_block=1),
            scheduler=Hunyuan15SchedulerConfig(shift=5.0)))


def _full_hunyuan15() -> ModelConfig:
    # HunyuanVideo-1.5 (8.3B) 480p image-to-video as published (the step-distilled model: 8 steps, no CFG, shift 7)
    return _full().replace(
        name="full-hunyuan15",
        decoder=Hunyuan15DecoderConfig(
            transformer=Hunyuan15TransformerConfig(num_attention_heads=16, attention_head_dim=128, num_layers=54,
                                                   text_embed_dim=3584, rope_axes_dim=(16, 56, 56)),
            vae=Hunyuan15VAEConfig(latent_channels=32, block_out_channels=(128, 256, 512, 1024, 1024),
                                   layers_per_block=2),
            scheduler=Hunyuan15SchedulerConfig(shift=7.0)),
        generation=GenerationConfig(height=480, width=848, num_frames=121, num_inference_steps=8,
                                    max_new_tokens=128))


# Hybrid-encoder presets: their base preset plus a DINOv2 (ViT-L/14 on the full size, as the research used).
def _tiny_hybrid() -> ModelConfig:
    return _tiny().replace(name="tiny-hybrid", spatial_encoder=SpatialEncoderConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=56, crop_size=56, resize_size=64))


def _small_hybrid() -> ModelConfig:
    return _small().replace(name="small-hybrid", spatial_encoder=SpatialEncoderConfig(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, image_size=112, crop_size=112, resize_size=128))


def _full_hybrid() -> ModelConfig:
    return _full().replace(name="full-hybrid", spatial_encoder=SpatialEncoderConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, image_size=518))


PRESETS = {"tiny": _tiny, "small": _small, "full": _full, "tiny-hunyuan15": _tiny_hunyuan15,
           "small-hunyuan15": _small_hunyuan15, "full-hunyuan15": _full_hunyuan15, "tiny-hybrid": _tiny_hybrid,
           "small-hybrid": _small_hybrid, "full-hybrid": _full_hybrid}


def preset(name: str) -> ModelConfig:
    """The config of a named preset (`tiny`, `small`, `full`, their `-hunyuan15` and `-hybrid` variants)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise UnknownPresetError(f"preset {name!r} is unknown; choose one of {sorted(PRESETS)}") from None


__all__ = [
    "AdapterConfig", "DECODER_FAMILIES", "DecoderConfig", "GenerationConfig", "Hunyuan15DecoderConfig",
    "Hunyuan15SchedulerConfig", "Hunyuan15TransformerConfig", "Hunyuan15VAEConfig", "LTXDecoderConfig", "ModelConfig",
    "ProcessorConfig", "RequestLimits", "SchedulerConfig", "SpatialEncoderConfig", "TextConfig", "TransformerConfig", "VAEConfig",
    "VisionConfig", "PRESETS", "preset",
]
