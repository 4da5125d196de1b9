"""Backends as a registry: one `BackendSpec` per `Backend`, shared by builders (what to build), the engine (which
runner loads a built stage), the bench and the CLI, so neither side switches on backend strings.

An entry declares the stages the backend leaves to eager (and why), its options per device type, the precisions it
runs per device type, the packages it needs (checked at once, naming every missing one), the package versions its
artifacts depend on, whether a CUDA graph may capture its stage calls, and the runtime module holding its runner
(`foresight_engine.engine.runners.<name>`, a `load(stage, entry, context) -> stage function`). Adding a backend is
an enum member, its entry below, its runner file and (for backends that write files) its exporter in
`builders/exporters.py`.
"""
from __future__ import annotations

import enum
import importlib
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

import torch

from .errors import BackendUnavailable, ConfigError
from .precision import COMPONENTS, Precision, PrecisionPolicy


class Backend(str, enum.Enum):
    EAGER = "eager"  # the eager modules themselves (the reference)
    COMPILE = "compile"  # torch.export + AOTInductor packages of the stage wrappers, loaded without compiling
    ONNX = "onnx"  # ONNX graphs run by ONNX Runtime
    TENSORRT = "tensorrt"  # ONNX graphs built into TensorRT plans, run by the native runner (GPU only)
    TORCH_TENSORRT = "torch-tensorrt"  # torch.export programs compiled by Torch-TensorRT (GPU only)

    @classmethod
    def parse(cls, value: "str | Backend") -> "Backend":
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"unknown backend {value!r}; choose one of {[b.value for b in cls]}") from None

    @property
    def spec(self) -> "BackendSpec":
        return REGISTRY[self]


@dataclass(frozen=True)
class Requirement:
    """An importable package a backend needs, with the extra that installs it."""

    module: str
    extra: str
    min_major: int | None = None

    def problem(self) -> str | None:
        """Why the requirement is not met here (None when it is)."""
        try:
            module = importlib.import_module(self.module)
        except ImportError as exc:
            return (f"the `{self.module}` Python package is not importable ({exc}); install it with "
                    f"`pip install 'foresight-engine[{self.extra}]'`")
        if self.min_major is not None:
            version = getattr(module, "__version__", "unknown")
            major = re.match(r"\d+", version)
            if major is None or int(major.group()) < self.min_major:
                return f"{self.module} {version} is too old: version >= {self.min_major} is needed"
        return None


_ALL_PRECISIONS = (Precision.FP32, Precision.BF16, Precision.FP16)
_GPU_PRECISIONS = {"cuda": (Precision.FP32, Precision.BF16, Precision.FP16, Precision.FP8)}


@dataclass(frozen=True)
class BackendSpec:
    backend: Backend
    description: str
    runner: str | None  # module under foresight_engine.engine.runners (None: the eager modules run it)
    devices: tuple[str, ...]  # device types it runs on
    toolchain: tuple[str, ...]  # packages whose versions its artifacts depend on
    skips: Mapping[str, str] = field(default_factory=dict)  # stage -> why it runs eager under this backend
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # device type -> options
    precisions: Mapping[str, tuple[Precision, ...]] = field(default_factory=dict)  # device type -> precisions
    precision_note: str = ""  # why other precisions are refused
    requirements: tuple[Requirement, ...] = ()
    graphable: bool = False  # a CUDA graph may capture its stage calls
    fallback: str = ""  # what to use instead when it is unavailable
    # its `denoise` stage is the static plan's whole step (`StaticStep`: velocity + guidance + Euler update) rather
    # than one plain transformer forward (`export_specs(config, denoise_ops=...)`)
    static_denoise: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "skips", MappingProxyType(dict(self.skips)))
        object.__setattr__(self, "options", MappingProxyType({k: MappingProxyType(dict(v))
                                                              for k, v in self.options.items()}))
        object.__setattr__(self, "precisions", MappingProxyType(dict(self.precisions)))

    @property
    def name(self) -> str:
        return self.backend.value

    def takes(self, stage: str) -> bool:
        return stage not in self.skips

    def options_for(self, device: str | torch.device) -> dict[str, Any]:
        return dict(self.options.get(torch.device(device).type, {}))

    def precisions_for(self, device: str | torch.device) -> tuple[Precision, ...]:
        return self.precisions.get(torch.device(device).type, _ALL_PRECISIONS)

    def missing(self, device: str | torch.device) -> list[str]:
        """Everything that keeps this backend from running on `device` here (empty: it can)."""
        out = []
        kind = torch.device(device).type
        if kind not in self.devices or kind == "cuda":
            if "cuda" in self.devices and not torch.cuda.is_available():
                out.append("no CUDA device (torch.cuda.is_available() is False)")
            elif kind not in self.devices:
                out.append(f"it runs on {list(self.devices)}, not on {kind!r}")
        out += [p for r in self.requirements if (p := r.problem()) is not None]
        return out

    def require(self, device: str | torch.device) -> None:
        """Raise `BackendUnavailable` naming every missing piece (the one capability check per backend)."""
        missing = self.missing(device)
        if missing:
            raise BackendUnavailable(f"{self.description} backend unavailable: " + "; ".join(missing) + "."
                                     + (f" {self.fallback}" if self.fallback else ""))

    def check_policy(self, policy: PrecisionPolicy, device: str | torch.device) -> None:
        """Raise `ConfigError` when a component's precision is one this backend does not run on `device`."""
        allowed = self.precisions_for(device)
        bad = sorted({policy.of(c).value for c in COMPONENTS if policy.of(c) not in allowed})
        if bad:
            raise ConfigError(f"--backend {self.name} on {torch.device(device).type} runs "
                              f"{[p.value for p in allowed]}; precision {bad} is refused: {self.precision_note}")

    def high_precision(self, device: str | torch.device) -> Precision:
        """What an fp8 policy keeps its sensitive layers in: bf16 where the backend runs it, else fp32."""
        return Precision.BF16 if Precision.BF16 in self.precisions_for(device) else Precision.FP32


_TORCH = ("torch", "transformers", "diffusers")
_ONNX_OPTIONS = {"opset": 20, "dynamo": True}
# AOTInductor: freezing folds the weights into the package as constants (prepacked for oneDNN on the CPU, where it
# also turns int8 Q/DQ Linears into oneDNN int8 GEMMs); on a GPU inductor autotunes its GEMMs and leaves CUDA graphs
# to the engine, which captures the whole denoising loop itself
_AOT_CPU = {"fullgraph": True, "dynamic": False, "aot": True, "freezing": True, "max_autotune": False}
_AOT_CUDA = {"fullgraph": True, "dynamic": False, "aot": True, "freezing": True, "max_autotune": True}

REGISTRY: Mapping[Backend, BackendSpec] = MappingProxyType({
    Backend.EAGER: BackendSpec(
        Backend.EAGER, "eager", runner=None, devices=("cpu", "cuda"), toolchain=_TORCH, graphable=True,
        precision_note="fp8 needs --backend onnx, tensorrt or torch-tensorrt (Q/DQ graphs), int8 --backend compile (oneDNN int8 "
                       "GEMMs in the compiled graph); eager would only simulate them, slower than fp32"),
    Backend.COMPILE: BackendSpec(
        Backend.COMPILE, "torch.export + AOTInductor", runner="compile", devices=("cpu", "cuda"),
        toolchain=_TORCH + ("torchao",),  # torchao's x86 passes lower the int8 Linears
        skips={"vision": "runs eager under compile (the AOTInductor package of the host-layout vision stage is "
                         "not built yet; onnx, tensorrt and torch-tensorrt build it)",
               "prefill": "prompt and cached-prefix lengths vary per request (a fixed-shape compile would "
                          "recompile for each): runs eager"},
        options={"cpu": _AOT_CPU, "cuda": _AOT_CUDA},
        precisions={"cpu": (Precision.FP32, Precision.BF16, Precision.FP16, Precision.INT8),
                    "cuda": (Precision.FP32, Precision.BF16, Precision.FP16)},
        graphable=True, static_denoise=True,
        precision_note="fp8 needs --backend onnx or tensorrt (Q/DQ graphs; compile would only simulate it on the "
                       "CPU, slower than fp32); int8 runs on x86 CPUs (oneDNN), on a GPU use fp8"),
    Backend.ONNX: BackendSpec(
        Backend.ONNX, "ONNX Runtime", runner="onnx", devices=("cpu", "cuda"),
        toolchain=_TORCH + ("onnx", "onnxruntime"),
        options={"cpu": _ONNX_OPTIONS, "cuda": _ONNX_OPTIONS},
        precisions={"cpu": (Precision.FP32, Precision.FP8),
                    "cuda": (Precision.FP32, Precision.BF16, Precision.FP16, Precision.FP8)},
        precision_note="ONNX Runtime's CPU provider runs fp32 (and fp8 Q/DQ graphs); bf16/fp16 have no ONNX "
                       "Runtime CPU kernels: use --backend compile or eager for them",
        requirements=(Requirement("onnx", "onnx"), Requirement("onnxruntime", "onnx"),
                      Requirement("onnxscript", "onnx"))),
    # ONNX graphs (strongly typed: precision from the graph's types and float8 Q/DQ nodes) -> one plan per stage,
    # validated on the GPU against eager on the GPU; run by engine/runners/tensorrt.py on preallocated buffers
    Backend.TENSORRT: BackendSpec(
        Backend.TENSORRT, "TensorRT", runner="tensorrt", devices=("cuda",),
        toolchain=_TORCH + ("onnx", "tensorrt"), options={"cuda": _ONNX_OPTIONS}, precisions=_GPU_PRECISIONS,
        requirements=(Requirement("tensorrt", "tensorrt", min_major=10), Requirement("onnx", "tensorrt"),
                      Requirement("onnxscript", "tensorrt")),
        graphable=True, fallback="Use `--backend onnx` on this machine."),
    # torch.export of each stage wrapper -> torch_tensorrt.dynamo.compile (explicit typing; FP8 from ModelOpt's
    # quantized modules) -> saved and reloaded with torch_tensorrt; run like an eager module on the current stream
    Backend.TORCH_TENSORRT: BackendSpec(
        Backend.TORCH_TENSORRT, "Torch-TensorRT", runner="torch_tensorrt", devices=("cuda",),
        toolchain=_TORCH + ("tensorrt", "torch_tensorrt", "nvidia-modelopt"),
        options={"cuda": {"use_explicit_typing": True, "min_block_size": 1}}, precisions=_GPU_PRECISIONS,
        requirements=(Requirement("torch_tensorrt", "tensorrt", min_major=2),
                      Requirement("tensorrt", "tensorrt", min_major=10), Requirement("modelopt", "tensorrt")),
        graphable=True, fallback="Use `--backend compile` on this machine."),
})


def toolchain_packages() -> tuple[str, ...]:
    """Every package some backend's artifacts depend on, in a stable order."""
    return tuple(dict.fromkeys(p for spec in REGISTRY.values() for p in spec.toolchain))


__all__ = ["Backend", "BackendSpec", "REGISTRY", "Requirement", "toolchain_packages"]
