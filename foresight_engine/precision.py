"""Numeric precision: one enum and a per-component policy. Shared by `builders/` (what to build) and `engine/`
(what was built), so neither imports the other.

Norms need no entry of their own: Qwen2.5-VL's RMSNorm and diffusers' RMSNorm/LayerNorm upcast to fp32 inside,
whatever their weights' dtype. What a policy keeps higher is whole components (the VAE under fp16) and, under
fp8 and int8, the layers named in `keep_high` (kept in `high`).

fp8 and int8 are the same scheme on two kinds of hardware: the Linears of the two transformers (backbone, LTX)
with calibrated scales, everything else in `high`. fp8 is real on a GPU (TensorRT) and simulated on a CPU; int8
is real on a CPU (`foresight_engine/int8.py`: oneDNN's VNNI/AMX GEMMs through the compile backend).
"""
from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from .errors import ConfigError

COMPONENTS = ("vision_tower", "backbone", "adapter", "video_decoder", "vae", "spatial_encoder")  # the last: hybrid


class Precision(str, enum.Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"  # e4m3 weights+activations of nn.Linear (simulated on a CPU), the rest in bf16
    INT8 = "int8"  # int8 weights (per channel) + uint8 activations (per tensor) of nn.Linear, the rest in bf16

    @classmethod
    def parse(cls, value: "str | Precision") -> "Precision":
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"unknown precision {value!r}; choose one of {[p.value for p in cls]}") from None

    @property
    def quantized(self) -> bool:
        """fp8 and int8: calibrated Linears, the rest of the component in the policy's `high` precision."""
        return self in (Precision.FP8, Precision.INT8)

    @property
    def storage_dtype(self) -> torch.dtype:
        """The dtype weights are stored and run in (fp8, int8: see `PrecisionPolicy.dtype`)."""
        if self.quantized:
            raise ConfigError(f"{self.value} components keep their other weights in the policy's `high` precision: "
                              "use PrecisionPolicy.dtype")
        return {Precision.FP32: torch.float32, Precision.BF16: torch.bfloat16, Precision.FP16: torch.float16}[self]


# Layers an fp8 or int8 policy keeps in `high`: the final projections and embeddings (PTQ error concentrates there).
FP8_KEEP_HIGH = ("lm_head", "proj_out", "embed", "patch_embed", "caption_projection", "time_embed", "latent_in",
                 "merger")
INT8_KEEP_HIGH = FP8_KEEP_HIGH


@dataclass(frozen=True)
class PrecisionPolicy:
    """Precision per component (`COMPONENTS`; `spatial_encoder` applies when the model has the hybrid encoder),
    plus the layers an fp8/int8 component keeps in `high`."""

    vision_tower: Precision
    backbone: Precision
    adapter: Precision
    video_decoder: Precision
    vae: Precision
    spatial_encoder: Precision
    keep_high: tuple[str, ...] = field(default=())
    high: Precision = Precision.BF16
    # FP8 options of the attention (quantized Q/DQ around it; see builders/fp8_attention.py), behind the gate:
    fp8_kv_cache: bool = False  # keys/values read by the backbone's attention in e4m3
    fp8_attention: bool = False  # queries, keys, values and softmax probabilities in e4m3 (fp8 components)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in COMPONENTS or f.name == "high":
                value = getattr(self, f.name)
                if not isinstance(value, Precision):
                    object.__setattr__(self, f.name, Precision.parse(value))
        if self.high.quantized:
            raise ConfigError(f"precision policy: high={self.high.value} makes no sense (it is what sensitive layers "
                              "avoid)")
        if not isinstance(self.keep_high, tuple):
            object.__setattr__(self, "keep_high", tuple(self.keep_high))
        for name in ("fp8_kv_cache", "fp8_attention"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"precision policy: {name} must be a bool, got {getattr(self, name)!r}")
        if self.fp8_kv_cache and self.backbone != Precision.FP8:
            raise ConfigError(f"precision policy: fp8_kv_cache needs the backbone in fp8 (it is {self.backbone.value})")
        if self.fp8_attention and Precision.FP8 not in {self.of(c) for c in COMPONENTS}:
            raise ConfigError("precision policy: fp8_attention needs an fp8 component (use --precision fp8)")

    def fp8_attention_options(self, component: str) -> tuple[bool, bool]:
        """(kv_cache, attention): the FP8 attention options that apply to `component`'s stages."""
        fp8 = self.of(component) == Precision.FP8
        return fp8 and self.fp8_kv_cache and component == "backbone", fp8 and self.fp8_attention

    @classmethod
    def for_precision(cls, precision: "str | Precision", high: "str | Precision" = "bf16", *,
                      fp8_kv_cache: bool = False, fp8_attention: bool = False) -> "PrecisionPolicy":
        """The default policy of a requested precision; `high` is what fp8/int8 keep their sensitive parts in."""
        p, high = Precision.parse(precision), Precision.parse(high)
        options = dict(fp8_kv_cache=fp8_kv_cache, fp8_attention=fp8_attention)
        if p == Precision.FP16:
            # fp16 overflows in the VAE's decoder convolutions: keep it in fp32
            return cls(p, p, p, p, Precision.FP32, p, **options)
        if p == Precision.FP8:
            # fp8 where the FLOPs are (the two transformers' Linears); vision, adapter, VAE, DINOv2 and the
            # sensitive layers in `high`
            return cls(high, p, high, p, high, high, keep_high=FP8_KEEP_HIGH, high=high, **options)
        if p == Precision.INT8:
            # the same split on the CPU: int8 where the FLOPs are, vision tower, adapter, VAE, DINOv2, norms and
            # the sensitive layers in `high`
            return cls(high, p, high, p, high, high, keep_high=INT8_KEEP_HIGH, high=high, **options)
        return cls(p, p, p, p, p, p, **options)

    def of(self, component: str) -> Precision:
        if component not in COMPONENTS:
            raise ConfigError(f"unknown component {component!r}; choose one of {list(COMPONENTS)}")
        return getattr(self, component)

    def dtype(self, component: str) -> torch.dtype:
        """What the component's weights are stored and run in (fp8 Linears keep `high` master weights; int8 Linears
        their bias and output)."""
        p = self.of(component)
        return self.high.storage_dtype if p.quantized else p.storage_dtype

    def keeps_high(self, module_name: str) -> bool:
        """Whether layer `module_name` of an fp8/int8 component stays in `high`."""
        return any(part in module_name for part in self.keep_high)

    @property
    def name(self) -> str:
        """The single precision when uniform, else `mixed`."""
        values = {self.of(c) for c in COMPONENTS}
        return values.pop().value if len(values) == 1 else "mixed"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {c: self.of(c).value for c in COMPONENTS}
        out.update(keep_high=list(self.keep_high), high=self.high.value)
        if self.fp8_kv_cache or self.fp8_attention:  # left out when off: the keys of other builds do not move
            out.update(fp8_kv_cache=self.fp8_kv_cache, fp8_attention=self.fp8_attention)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PrecisionPolicy":
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"precision policy: unknown field(s) {unknown}")
        missing = sorted(set(COMPONENTS) - set(data))
        if missing:
            raise ConfigError(f"precision policy: missing component(s) {missing}")
        return cls(**{k: tuple(v) if k == "keep_high" else v for k, v in data.items()})

    @classmethod
    def from_json(cls, text: str) -> "PrecisionPolicy":
        return cls.from_dict(json.loads(text))


def apply_policy(components: dict[str, torch.nn.Module], policy: PrecisionPolicy) -> None:
    """Cast each component (in place) to the dtype its policy entry stores and runs in."""
    for name, module in components.items():
        module.to(policy.dtype(name))


__all__ = ["COMPONENTS", "FP8_KEEP_HIGH", "INT8_KEEP_HIGH", "Precision", "PrecisionPolicy", "apply_policy"]
