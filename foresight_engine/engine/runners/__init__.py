"""Runners: how the engine runs a built stage. One file per backend (the registry's `BackendSpec.runner` names it),
each with `load(stage, entry, context) -> stage function` (tensors in, tensors out, on the engine's device; one
output as a tensor, several as a tuple, like the eager stage wrapper it replaces). The engine calls one function
per stage; builders only write the files these load.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ...artifact import StageEntry
from ...backends import Backend
from ...config import ModelConfig
from ...errors import ArtifactError
from ...models.export_spec import BuildShape
from ...models.glp import GLPModel
from ...models.video_geometry import VideoGeometry
from ...precision import PrecisionPolicy

StageFn = Callable[..., "torch.Tensor | tuple[torch.Tensor, ...]"]


@dataclass(frozen=True)
class RunnerContext:
    """What a runner may read: the artifact, the device, the loaded (eager) weights, the build shape and options."""

    directory: Path
    device: torch.device
    model: GLPModel  # the artifact's weights, on `device` (compile wraps them; onnx/tensorrt ignore them)
    shape: BuildShape
    policy: PrecisionPolicy
    options: Mapping[str, Any] = field(default_factory=dict)  # the backend's build options from the manifest


def load(stage: str, entry: StageEntry, context: RunnerContext) -> StageFn:
    """The stage function of a built `entry`, from its backend's runner module."""
    spec = Backend.parse(entry.backend).spec
    if spec.runner is None:
        raise ArtifactError(f"rebuild needed: stage {stage} is marked built by backend {entry.backend!r}, "
                            "which has no runner")
    module = importlib.import_module(f"{__name__}.{spec.runner}")
    return module.load(stage, entry, context)


@dataclass(frozen=True)
class BuiltStages:
    """The stages a backend built into an artifact, loaded by their runners and fixed to the build `shape`."""

    functions: Mapping[str, StageFn]
    shape: BuildShape
    backends: Mapping[str, Backend]  # stage -> the backend that built it
    denoise_ops: frozenset[str] | None = None  # a static `denoise` step's custom ops (None: the plain form)

    @property
    def static_denoise(self) -> bool:
        """Whether the built `denoise` stage is the static plan's whole step (`StaticStep`): built by a backend that
        builds it so, for a family that has it (the build then records its ops)."""
        return ("denoise" in self.functions and self.backends["denoise"].spec.static_denoise
                and self.denoise_ops is not None)

    def graphable(self, stage: str) -> bool:
        """Whether a CUDA graph may capture calls of built `stage`."""
        return self.backends[stage].spec.graphable

    def check(self, config: ModelConfig, geometry: VideoGeometry, batch: int) -> None:
        """Refuse (`ArtifactError`, before any model runs) a request whose shapes a built stage was not built for,
        naming the request arguments to change either way ("built for 9 frames at 64x64; ... ask for ...")."""
        built = self.shape.geometry(config)
        asked = BuildShape(height=geometry.height, width=geometry.width, num_frames=geometry.num_frames,
                           frame_rate=geometry.frame_rate, guidance=batch == 2)
        if "denoise" in self.functions and (geometry, batch) != (built, self.shape.batch):
            raise ArtifactError(self.shape.mismatch(asked) or f"this artifact's denoising step is built for "
                                f"(geometry, batch) {(built, self.shape.batch)}; the request needs {(geometry, batch)}")
        if "vae_decode" in self.functions and geometry.latent_shape != built.latent_shape:
            # the VAE decode depends on the latent grid only: frame rate and guidance are not the mismatch
            asked = replace(asked, frame_rate=self.shape.frame_rate, guidance=self.shape.guidance)
            raise ArtifactError(self.shape.mismatch(asked) or f"this artifact's VAE decode is built for latents "
                                f"{built.latent_shape}, the request needs {geometry.latent_shape}")

    def check_images(self, config: ModelConfig, image_grid_thw: torch.Tensor) -> None:
        """Refuse (`ArtifactError`, before any model runs) images whose patch grid is not the built vision stage's."""
        if "vision" not in self.functions:
            return
        built = self.shape.image_grid(config)
        other = sorted({tuple(g) for g in image_grid_thw.tolist()} - {built})
        if other:
            size = (self.shape.image_height or self.shape.height, self.shape.image_width or self.shape.width)
            raise ArtifactError(f"rebuild needed: this artifact's vision stage is built for images of patch grid "
                                f"{built} (e.g. {size[0]}x{size[1]} pixels); the request's images give {other} (build "
                                "with --image-size HxW of your images, or --stages without vision)")


__all__ = ["BuiltStages", "RunnerContext", "StageFn", "load"]
