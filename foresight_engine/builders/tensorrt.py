"""TensorRT plans, the build side of the GPU-only layer. Everything it consumes is built and validated on the CPU.

- ``require_tensorrt()`` (from the runner, ``engine/runners/tensorrt.py``) is the ONE capability check: it returns
  the ``tensorrt`` module, or raises ``BackendUnavailable`` naming everything missing (no CUDA device, ``tensorrt``
  not importable, version too old) and suggesting ``--backend onnx``.
- ``TensorRTBuildConfig`` (frozen, validated, JSON round-trip): optimization profiles (``OptimizationProfile`` =
  {input name: (min, opt, max) shape}; the builder makes one per stage from its ExportSpec, ``opt`` at the built
  request shape), ``workspace_bytes`` and ``optimization_level`` (0-5, TensorRT's default 3). Networks are always
  STRONGLY TYPED: precision comes from the ONNX graph's tensor types (the weights were cast by the precision policy
  before export) and its float8 Q/DQ nodes. No precision builder flag is ever set: TensorRT 11 removed them
  (``BuilderFlag.FP16/BF16/FP8``) and always builds strongly typed; on TensorRT 10 the ``STRONGLY_TYPED`` creation
  flag gives the same network (11 accepts and ignores it).
- ``timing_cache_key(trt_version, sm)`` / ``timing_cache_path(cache_dir, trt_version, sm)``: timing caches are only
  valid for one TensorRT version on one GPU architecture, so both are in the file name
  (``timing-trt10.3.0-sm90.cache``).
- ``build_engine(onnx_path, config, out_path, timing_cache_dir=None)``: parse, configure, build, serialize to a
  temporary file and rename; the timing cache is read before and written back after the build.

Only ``build_engine`` needs a GPU (the plan's runner lives with the engine's runners); it cannot run in this
project's CPU CI and is kept short.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..engine.runners.tensorrt import require_tensorrt
from ..errors import ConfigError, EngineBuildError
from ..video_io import atomic_output

Shape = tuple[int, ...]


def _shape(value: Any, what: str) -> Shape:
    if not isinstance(value, (tuple, list)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise ConfigError(f"{what} must be a sequence of ints, got {value!r}")
    if any(d < 0 for d in value):
        raise ConfigError(f"{what} has a negative dimension: {tuple(value)}")
    return tuple(value)


@dataclass(frozen=True)
class InputShapes:
    """min/opt/max shape of one network input; TensorRT tunes kernels for ``opt``."""

    name: str
    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"profile input name must be a non-empty string, got {self.name!r}")
        shapes = {k: _shape(getattr(self, k), f"profile {self.name!r} {k} shape") for k in ("min", "opt", "max")}
        for k, v in shapes.items():
            object.__setattr__(self, k, v)
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ConfigError(f"profile {self.name!r}: min/opt/max ranks differ: {self.min}, {self.opt}, {self.max}")
        for dim, (lo, mid, hi) in enumerate(zip(self.min, self.opt, self.max)):
            if not lo <= mid <= hi:
                raise ConfigError(f"profile {self.name!r} dim {dim}: need min <= opt <= max, got {lo}, {mid}, {hi}")


@dataclass(frozen=True)
class OptimizationProfile:
    """One TensorRT optimization profile: a shape range for each dynamic input."""

    inputs: tuple[InputShapes, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        names = [i.name for i in self.inputs]
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"an optimization profile needs distinct input names, got {names}")

    @classmethod
    def from_dict(cls, shapes: Mapping[str, Any]) -> OptimizationProfile:
        """From ``{input_name: (min, opt, max)}`` or ``{input_name: {"min": .., "opt": .., "max": ..}}``."""
        inputs = []
        for name, value in shapes.items():
            if isinstance(value, Mapping):
                if set(value) != {"min", "opt", "max"}:
                    raise ConfigError(f"profile {name!r} needs exactly the keys min/opt/max, got {sorted(value)}")
                value = (value["min"], value["opt"], value["max"])
            if not isinstance(value, (tuple, list)) or len(value) != 3:
                raise ConfigError(f"profile {name!r} must be (min, opt, max) shapes, got {value!r}")
            inputs.append(InputShapes(name, *value))
        return cls(tuple(inputs))

    def to_dict(self) -> dict[str, dict[str, list[int]]]:
        return {i.name: {"min": list(i.min), "opt": list(i.opt), "max": list(i.max)} for i in self.inputs}


@dataclass(frozen=True)
class TensorRTBuildConfig:
    """What ``build_engine`` asks of the TensorRT builder (see the module docstring)."""

    profiles: tuple[OptimizationProfile, ...] = ()
    workspace_bytes: int = 4 << 30
    optimization_level: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "profiles", tuple(self.profiles))
        workspace = self.workspace_bytes
        if not isinstance(workspace, int) or isinstance(workspace, bool) or workspace <= 0:
            raise ConfigError(f"workspace_bytes must be a positive int, got {self.workspace_bytes!r}")
        if self.optimization_level not in range(6) or isinstance(self.optimization_level, bool):
            raise ConfigError(f"optimization_level must be an int in 0..5, got {self.optimization_level!r}")
        if any(not isinstance(p, OptimizationProfile) for p in self.profiles):
            raise ConfigError(f"profiles must be OptimizationProfile objects, got {self.profiles!r}")
        names = [sorted(i.name for i in p.inputs) for p in self.profiles]
        if any(n != names[0] for n in names):
            raise ConfigError(f"every optimization profile must cover the same inputs, got {names}")

    @classmethod
    def from_profile(cls, shapes: Mapping[str, Any], **kwargs: Any) -> TensorRTBuildConfig:
        """A config with one profile from ``{input_name: (min, opt, max)}``."""
        return cls(profiles=(OptimizationProfile.from_dict(shapes),), **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {"profiles": [p.to_dict() for p in self.profiles], "workspace_bytes": self.workspace_bytes,
                "optimization_level": self.optimization_level}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorRTBuildConfig:
        known = set(cls().to_dict())
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown TensorRTBuildConfig keys {unknown}; known: {sorted(known)} (precision comes "
                              "from the graph: strongly typed networks have no precision flags)")
        d = dict(d)
        d["profiles"] = tuple(OptimizationProfile.from_dict(p) for p in d.get("profiles", ()))
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TensorRTBuildConfig:
        return cls.from_dict(json.loads(text))


def timing_cache_key(trt_version: str, sm: tuple[int, int] | int) -> str:
    """``trt<version>-sm<major><minor>``: a timing cache is only reusable for one TensorRT version and GPU arch."""
    if not isinstance(trt_version, str) or not re.fullmatch(r"\d+(\.\d+)*([.+-]?[A-Za-z0-9]+)*", trt_version):
        raise ConfigError(f"TensorRT version must look like '10.3.0', got {trt_version!r}")
    if isinstance(sm, tuple) and len(sm) == 2 and all(isinstance(v, int) and v >= 0 for v in sm):
        sm_text = f"{sm[0]}{sm[1]}"
    elif isinstance(sm, int) and not isinstance(sm, bool) and sm > 0:
        sm_text = str(sm)
    else:
        raise ConfigError(f"SM must be a (major, minor) compute capability or an int like 90, got {sm!r}")
    return f"trt{trt_version}-sm{sm_text}"


def timing_cache_path(cache_dir: str | Path, trt_version: str, sm: tuple[int, int] | int) -> Path:
    return Path(cache_dir) / f"timing-{timing_cache_key(trt_version, sm)}.cache"


def build_engine(
    onnx_path: str | Path,
    config: TensorRTBuildConfig,
    out_path: str | Path,
    *,
    timing_cache_dir: str | Path | None = None,
) -> Path:
    """Build a serialized TensorRT engine from an ONNX file (GPU only); returns ``out_path``."""
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    typing = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # 10.x; always on in 11.x
    network = builder.create_network(0 if typing is None else 1 << int(typing))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # external data is read from next to the graph
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path}: {errors}")

    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace_bytes)
    builder_config.builder_optimization_level = config.optimization_level
    for profile in config.profiles:
        dynamic = [i for i in profile.inputs if i.min != i.max]  # fixed inputs keep the graph's static shapes
        if dynamic:
            trt_profile = builder.create_optimization_profile()
            for shapes in dynamic:
                trt_profile.set_shape(shapes.name, shapes.min, shapes.opt, shapes.max)
            builder_config.add_optimization_profile(trt_profile)

    cache_file = None
    if timing_cache_dir is not None:
        cache_file = timing_cache_path(timing_cache_dir, trt.__version__, torch.cuda.get_device_capability())
        cache = builder_config.create_timing_cache(cache_file.read_bytes() if cache_file.is_file() else b"")
        builder_config.set_timing_cache(cache, ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    if cache_file is not None:
        with atomic_output(cache_file) as tmp:
            tmp.write_bytes(memoryview(builder_config.get_timing_cache().serialize()))
    out_path = Path(out_path)
    with atomic_output(out_path) as tmp:
        tmp.write_bytes(memoryview(serialized))
    return out_path
