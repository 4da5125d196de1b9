"""The resolved plan of a build: which backend runs each stage, each component's precision, the shape profiles,
the key factors (and so the cache key), and an estimate of the memory the artifact needs."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .. import kernels
from ..artifact import KeyFactors, device_info, toolchain
from ..backends import Backend
from ..errors import ConfigError
from ..models.export_spec import BuildShape, ExportSpec, export_specs
from ..models.families import family
from ..models.glp import GLPModel
from ..precision import COMPONENTS, PrecisionPolicy


@dataclass(frozen=True)
class StagePlan:
    name: str
    component: str
    backend: Backend  # what runs it inside the artifact
    profile: dict[str, Any]
    reason: str = ""  # why it runs eager in a non-eager build

    def to_dict(self) -> dict[str, Any]:
        out = {"backend": self.backend.value, "profile": {k: [list(s) for s in v] for k, v in self.profile.items()}}
        return out | ({"reason": self.reason} if self.reason else {})


@dataclass(frozen=True)
class BuildPlan:
    backend: Backend
    policy: PrecisionPolicy
    shape: BuildShape
    stages: dict[str, StagePlan]
    factors: KeyFactors
    memory_bytes: dict[str, int] = field(default_factory=dict)  # per component: weights + largest stage I/O

    @property
    def key(self) -> str:
        return self.factors.key()

    def describe(self, cache_hit: bool | None = None) -> str:
        lines = [f"build plan: model {self.factors.config['name']}, backend {self.backend.value}, "
                 f"precision {self.policy.name}, key {self.key[:16]}"]
        if cache_hit is not None:
            lines.append(f"  cache: {'HIT (nothing to build)' if cache_hit else 'miss (will build)'}")
        lines.append(f"  shape: {self.shape.to_dict()}")
        for component in (c for c in COMPONENTS if c in self.memory_bytes):  # the model's own components
            lines.append(f"  {component:14s} {self.policy.of(component).value:5s} "
                         f"~{self.memory_bytes.get(component, 0) / 1e6:8.1f} MB")
            for stage in self.stages.values():
                if stage.component == component:
                    prof = "; ".join(f"{k} {list(v[0])}..{list(v[2])}" if v[0] != v[2] else f"{k} {list(v[1])}"
                                     for k, v in stage.profile.items())
                    lines.append(f"      {stage.name:10s} {stage.backend.value:8s} {prof}")
                    if stage.reason:
                        lines.append(f"      {'':10s} ({stage.reason})")
        lines.append(f"  estimated memory: {sum(self.memory_bytes.values()) / 1e6:.1f} MB "
                     "(weights at their precision + the largest stage inputs/outputs)")
        return "\n".join(lines)


def _io_bytes(spec: ExportSpec, shape: BuildShape) -> int:
    """Bytes of a stage's largest (max-profile) fp32 inputs, doubled for outputs of the same order."""
    return 2 * sum(4 * torch.Size(largest).numel() for _, _, largest in spec.profile(shape).values())


def _memory(model: GLPModel, policy: PrecisionPolicy, specs: dict[str, ExportSpec], shape: BuildShape) -> dict[str, int]:
    out = {}
    for name, module in model.components().items():
        weights = sum(p.numel() for p in module.state_dict().values()) * policy.dtype(name).itemsize
        io = max((_io_bytes(s, shape) for s in specs.values() if s.component == name), default=0)
        out[name] = weights + io
    return out


def resolve_plan(model: GLPModel, weights_hash: str, backend: str | Backend, policy: PrecisionPolicy,
                 shape: BuildShape, device: str = "cpu", calibration_hash: str | None = None,
                 stages: tuple[str, ...] | None = None) -> BuildPlan:
    """`stages` limits which stages `backend` builds (default: all it takes); the others run eager."""
    backend = Backend.parse(backend)
    spec = backend.spec
    shape.check(model.config)
    dev = device_info(device)
    names = export_specs(model.config)
    unknown = sorted(set(stages or ()) - set(names))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; choose from {list(names)}")
    skipped = dict(spec.skips)
    if stages is not None and backend != Backend.EAGER:
        skipped.update({name: "not selected (stages=...): runs eager" for name in names
                        if name not in stages and name not in skipped})
    # a static denoising step bakes in the custom ops its blocks call on the target device (and their tables)
    static_step = spec.static_denoise and family(model.config).static_step_spec is not None
    ops = sorted(kernels.wired_ops(dev["type"])) if static_step and "denoise" not in skipped else None
    specs = export_specs(model.config, None if ops is None else frozenset(ops))
    stages = {name: StagePlan(name, s.component, Backend.EAGER if name in skipped else backend, s.profile(shape),
                              skipped.get(name, "")) for name, s in specs.items()}
    options: dict[str, Any] = spec.options_for(dev["type"])
    options["stage_backends"] = {n: s.backend.value for n, s in stages.items()}
    if ops is not None:
        options["denoise_ops"] = ops
    if options.get("aot") and dev["type"] == "cpu":
        options["threads"] = torch.get_num_threads()  # inductor's CPU kernels bake their OpenMP thread count in
    factors = KeyFactors(
        config=model.config.to_dict(), weights_hash=weights_hash, precision=policy.to_dict(),
        shapes={"build": shape.to_dict(), "stages": {n: s.to_dict()["profile"] for n, s in stages.items()}},
        backend=backend.value, toolchain=toolchain(), device=dev, calibration_hash=calibration_hash, options=options)
    return BuildPlan(backend, policy, shape, stages, KeyFactors.from_dict(factors.to_dict()),
                     _memory(model, policy, specs, shape))
