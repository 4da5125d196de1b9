"""Video decoder families: each decoder the engine runs is one registry entry (`DecoderFamily`) plus its own
files in models/; the runtime, builders and bench reach it only through this interface and the two component
modules it builds. Adding a family is a config section (`config.py`), its files and one line in `FAMILIES`.

An entry provides:
- `build(config)` / `load(folder, lora, lora_scale)` / `save(...)`: its `video_decoder` and `vae` components from
  the config (fresh weights), or from a local diffusers folder (`transformer/`, `vae/`, `scheduler/`; a LoRA of
  the transformer fused at load), and back;
- `geometry(config, ...)`: a request's `VideoGeometry` (latent grid, RoPE scale, pinned tokens);
- `export_specs(config)`: the `denoise` and `vae_decode` stages (wrappers, inputs, profiles) builders export;
- `reference_pipeline(model, transformer=None)`: diffusers' own image-to-video pipeline on the model's weights,
  called like `ReferencePipeline` (the reference tests and the bench's peers);
- `full_preset`: the preset with the published sizes (the default generation settings of loaded weights);
- `published`: a figure quoted for the original pipeline at that size (`PublishedFigure`), which `plan` puts beside
  its projection on the same GPU.

The components it builds answer what the engine asks (see `VideoDecoderModule`, `VideoVAEModule`): the schedule,
where a request's denoising starts, its velocity models (eager reference, static plan, built stage), and the
VAE's image pre-processing, encode and decode. The FLOP/byte plan (`bench/plan.py`) counts these same stage
wrappers on the meta device.
"""
from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
import torch
from PIL import Image

from ..config import ModelConfig
from ..errors import ConfigError, WeightsError
from .denoising import StepVelocity

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .denoising import Schedule, StepFn, VelocityModel, VideoStart
    from .export_spec import ExportSpec
    from .video_geometry import VideoGeometry

# family name (the config's `decoder.family`) -> its module under foresight_engine.models (imported on first use)
FAMILIES = {"ltx": "ltx_family", "hunyuan15": "hunyuan15_family"}  # keys: config.DECODER_FAMILIES


class VideoDecoderModule(Protocol):
    """The `video_decoder` component (an `nn.Module` holding the transformer)."""

    transformer: torch.nn.Module

    def schedule(self, num_steps: int, num_tokens: int, device: torch.device | str = "cpu") -> "Schedule": ...

    def start(self, geometry: "VideoGeometry", image_latents: torch.Tensor,
              generator: torch.Generator) -> "VideoStart": ...

    def velocity_model(self, static: bool = True, step_cache: float | None = None) -> "VelocityModel": ...

    def stage_velocity(self, stage: "StepFn", graphable: bool) -> "VelocityModel": ...


class VideoVAEModule(Protocol):
    """The `vae` component (an `nn.Module` holding the diffusers VAE)."""

    timestep_conditioned: bool

    def preprocess(self, image: Image.Image, height: int, width: int) -> torch.Tensor: ...

    def encode_image(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...

    def decode_noise(self, latent_shape: tuple[int, ...], generator: torch.Generator,
                     device: torch.device | str) -> torch.Tensor | None: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, f, h, w] -> video [B, 3, F, H, W] in [-1, 1] (a timestep-conditioned VAE also takes the
        noise of `decode_noise` and the decode timestep)."""


class ReferencePipeline(Protocol):
    def __call__(self, image: Image.Image, conditioning: torch.Tensor, conditioning_mask: torch.Tensor, *,
                 height: int, width: int, num_frames: int, num_inference_steps: int, guidance_scale: float,
                 frame_rate: int, generator: torch.Generator) -> np.ndarray:
        """diffusers' pipeline fed the adapter's output: frames [F, H, W, 3] float in [0, 1]."""


@dataclass(frozen=True)
class PublishedFigure:
    """A latency quoted for the family's original pipeline at its full preset's generation settings."""

    gpu: str  # a `bench/gpus.py` name
    precision: str  # what the original pipeline runs in
    seconds: float  # per clip, end to end
    source: str


class DecoderFamily(Protocol):
    name: str
    transformer_class: str  # the diffusers class named in a decoder folder's transformer/config.json
    full_preset: str
    published: PublishedFigure | None

    def build(self, config: ModelConfig) -> tuple[torch.nn.Module, torch.nn.Module]: ...

    def load(self, folder: Path, lora: Path | None, lora_scale: float) -> tuple[Any, torch.nn.Module,
                                                                                 torch.nn.Module]: ...

    def save(self, video_decoder: torch.nn.Module, vae: torch.nn.Module, config: ModelConfig,
             folder: Path) -> None: ...

    def geometry(self, config: ModelConfig, height: int, width: int, num_frames: int,
                 frame_rate: int) -> "VideoGeometry": ...

    def export_specs(self, config: ModelConfig) -> "list[ExportSpec]": ...

    # `(config, ops) -> ExportSpec`: `denoise` as the static plan's whole step (velocity + guidance + Euler update,
    # one graph; what the compile backend builds), or None where the family has no such form
    static_step_spec: "Callable[[ModelConfig, frozenset[str]], ExportSpec] | None"

    def reference_pipeline(self, model: Any, transformer: torch.nn.Module | None = None) -> ReferencePipeline: ...


class TransformerDecoder(torch.nn.Module):
    """The base of a family's `video_decoder` component: its diffusers transformer and its schedule's config, and
    the velocity models the engine asks for, from what a family defines: `static_velocity` (a
    `static_velocity.TransformerVelocity` class), `reference_step(geometry)` (the eager reference's one-step
    function, graph-safe or not: `reference_graphable`) and `timestep_table` (every step's timestep as its one-step
    functions take it: `denoising.TimestepTable`)."""

    static_velocity: type
    reference_graphable: bool

    def __init__(self, transformer: torch.nn.Module, scheduler: Any):
        super().__init__()
        self.transformer = transformer
        self.scheduler_config = scheduler

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def reference_step(self, geometry: "VideoGeometry") -> "StepFn":
        raise NotImplementedError

    @staticmethod
    def timestep_table(geometry: "VideoGeometry", schedule: "Schedule", batch: int,
                       device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def velocity_model(self, static: bool = True, step_cache: float | None = None) -> "VelocityModel":
        """The eager ways to compute the velocity: the static plan (`static`, optionally with the first-block step
        cache) or the transformer's forward each step (the eager reference)."""
        if static:
            return self.static_velocity(self.transformer, step_cache)
        return StepVelocity(self.reference_step, graphable=self.reference_graphable,
                            timestep_table=self.timestep_table,
                            weights=lambda: self.transformer.state_dict(keep_vars=True).items())

    def stage_velocity(self, stage: "StepFn", graphable: bool) -> "VelocityModel":
        """The velocity of a built `denoise` stage (fixed to its build geometry: the engine refuses others)."""
        return StepVelocity(lambda geometry: stage, graphable=graphable, timestep_table=self.timestep_table)


def load_folder(folder: Path, transformer_class: type, vae_class: type, what: str, lora: Path | None,
                lora_scale: float) -> tuple[Any, Any, dict]:
    """A diffusers decoder folder's transformer (a LoRA fused in) and VAE in fp32, checked whole, and its scheduler's
    JSON ({} without one). `what` names the family in errors."""
    from .lora import fuse_lora
    from .weights import check_loading_info
    parts = []
    for sub, label, cls in (("transformer", "transformer", transformer_class), ("vae", "VAE", vae_class)):
        module, info = cls.from_pretrained(folder, subfolder=sub, torch_dtype=torch.float32, output_loading_info=True)
        check_loading_info(info, f"{what} {label} {folder / sub}")
        parts.append(module)
    if lora is not None:
        log.info("fused LoRA %s into %d modules", lora, len(fuse_lora(parts[0], lora, lora_scale)))
    scheduler_file = folder / "scheduler" / "scheduler_config.json"
    return parts[0], parts[1], json.loads(scheduler_file.read_text()) if scheduler_file.is_file() else {}


def save_folder(transformer: torch.nn.Module, vae: torch.nn.Module, scheduler: Any, folder: Path) -> None:
    """The diffusers folder `load_folder` reads: `transformer/`, `vae/`, `scheduler/` (`scheduler`: a diffusers
    scheduler object)."""
    transformer.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    scheduler.save_pretrained(folder / "scheduler")


def family(which: str | ModelConfig) -> DecoderFamily:
    """The registry entry of a family name or of a config's decoder."""
    name = which.decoder.family if isinstance(which, ModelConfig) else which
    if name not in FAMILIES:
        raise ConfigError(f"unknown decoder family {name!r}; choose one of {sorted(FAMILIES)}")
    return importlib.import_module(f"{__package__}.{FAMILIES[name]}").FAMILY


def family_of_folder(folder: str | Path) -> DecoderFamily:
    """The family whose transformer class a diffusers decoder folder holds (`transformer/config.json`)."""
    config_file = Path(folder) / "transformer" / "config.json"
    if not config_file.is_file():
        raise WeightsError(f"not a diffusers decoder folder (no transformer/config.json): {folder}")
    class_name = json.loads(config_file.read_text()).get("_class_name")
    entries = {family(name).transformer_class: family(name) for name in FAMILIES}
    if class_name not in entries:
        raise WeightsError(f"{config_file}: transformer class {class_name!r} is none of the decoder families' "
                           f"({sorted(entries)})")
    return entries[class_name]


__all__ = ["DecoderFamily", "FAMILIES", "PublishedFigure", "ReferencePipeline", "VideoDecoderModule",
           "TransformerDecoder", "VideoVAEModule", "family", "family_of_folder", "load_folder", "save_folder"]
