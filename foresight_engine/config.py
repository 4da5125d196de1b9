"""One typed config tree (frozen dataclasses) for the whole model stack; round-trips through JSON.

A preset is data: `tiny`, `small` and `full` are instances of `ModelConfig`, never branches in model code.
Every dataclass validates itself in `__post_init__` and names the offending value.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

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
    transformer: TransformerConfig
    vae: VAEConfig
    scheduler: SchedulerConfig
    generation: GenerationConfig

    def __post_init__(self) -> None:
        if self.vision.out_hidden_size != self.text.hidden_size:
            raise ConfigError(f"vision.out_hidden_size={self.vision.out_hidden_size} must equal "
                              f"text.hidden_size={self.text.hidden_size}")
        if self.vae.latent_channels != self.transformer.in_channels:
            raise ConfigError(f"vae.latent_channels={self.vae.latent_channels} must equal "
                              f"transformer.in_channels={self.transformer.in_channels}")

    @property
    def spatial_step(self) -> int:
        """Frame sides must be multiples of this: VAE compression x transformer patch."""
        return self.vae.spatial_compression * self.transformer.patch_size

    @property
    def temporal_step(self) -> int:
        """Frame counts must be `temporal_step * k + 1`."""
        return self.vae.temporal_compression * self.transformer.patch_size_t

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
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


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
        transformer=TransformerConfig(in_channels=8, num_attention_heads=2, attention_head_dim=16, num_layers=2,
                                      caption_channels=64),
        vae=VAEConfig(latent_channels=8, block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
                      spatio_temporal_scaling=(True, True, False, False),
                      decoder_block_out_channels=(8, 8, 8, 8), decoder_layers_per_block=(1, 1, 1, 1, 1),
                      decoder_spatio_temporal_scaling=(True, True, False, False),
                      decoder_inject_noise=(False, False, False, False, False), patch_size=1),
        scheduler=SchedulerConfig(),
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
        transformer=TransformerConfig(in_channels=32, num_attention_heads=8, attention_head_dim=64, num_layers=8,
                                      caption_channels=512),
        vae=VAEConfig(latent_channels=32, block_out_channels=(32, 64, 64, 64), layers_per_block=(1, 1, 1, 1, 1),
                      spatio_temporal_scaling=(True, True, True, False),
                      decoder_block_out_channels=(32, 64, 64, 64), decoder_layers_per_block=(1, 1, 1, 1, 1),
                      decoder_spatio_temporal_scaling=(True, True, True, False),
                      decoder_inject_noise=(False, False, False, False, False), patch_size=2),
        scheduler=SchedulerConfig(),
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
        transformer=TransformerConfig(in_channels=128, num_attention_heads=32, attention_head_dim=64, num_layers=28,
                                      caption_channels=4096),
        vae=VAEConfig(latent_channels=128, block_out_channels=(128, 256, 512, 512), layers_per_block=(4, 3, 3, 3, 4),
                      spatio_temporal_scaling=(True, True, True, False),
                      decoder_block_out_channels=(128, 256, 512, 512), decoder_layers_per_block=(4, 3, 3, 3, 4),
                      decoder_spatio_temporal_scaling=(True, True, True, False),
                      decoder_inject_noise=(False, False, False, False, False), patch_size=4),
        scheduler=SchedulerConfig(),
        generation=GenerationConfig(height=512, width=768, num_frames=121, num_inference_steps=8, max_new_tokens=128),
    )


PRESETS = {"tiny": _tiny, "small": _small, "full": _full}


def preset(name: str) -> ModelConfig:
    """The config of a named preset (`tiny`, `small`, `full`)."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise UnknownPresetError(f"preset {name!r} is unknown; choose one of {sorted(PRESETS)}") from None


__all__ = [
    "AdapterConfig", "GenerationConfig", "ModelConfig", "ProcessorConfig", "RequestLimits", "SchedulerConfig",
    "TextConfig", "TransformerConfig", "VAEConfig", "VisionConfig", "PRESETS", "preset",
]
