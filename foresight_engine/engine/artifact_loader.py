"""Load a built artifact (`foresight-engine build`) into a `GLPModel` whose components have the eager
components' signatures, so `Engine` runs it unchanged.

Order matters: `artifact.verify` checks the manifest's versions, device and every file's size and sha256
before anything is deserialized (safetensors, ONNX, processor files).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoProcessor

from ..artifact import Manifest, verify
from ..config import ModelConfig
from ..errors import ArtifactError
from ..models.export_spec import BuildShape, export_specs
from ..models.glp import GLPModel
from ..models.weights import load_strict, read_safetensors
from ..precision import PrecisionPolicy, apply_policy
from .stage_shims import (OnnxStage, StagedAdapter, StagedBackbone, StagedVAE, StagedVideoDecoder)

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.safetensors"
PROCESSOR_DIR = "processor"


def _stage_functions(model: GLPModel, manifest: Manifest, directory: Path, shape: BuildShape, device: torch.device):
    """{stage: tensor function} for every stage the artifact built (eager stages are absent)."""
    specs = export_specs(model.config)
    functions = {}
    for component in manifest.components.values():
        for stage, info in component["stages"].items():
            backend = info["backend"]
            if backend == "eager":
                continue
            if backend == "compile":
                # CPU artifacts hold the compile options, not compiled code: compile here (lazily, at the first call)
                options = {k: manifest.factors.options[k] for k in ("fullgraph", "dynamic", "mode")}
                functions[stage] = torch.compile(specs[stage].wrap(model, shape).eval(), **options)
            elif backend in ("onnx", "tensorrt"):
                # a tensorrt stage runs its ONNX graph on ONNX Runtime's TensorRT provider (CUDA/CPU where absent)
                functions[stage] = OnnxStage(directory / info["file"], device.type, quantized="fp8_scales" in info)
            else:
                raise ArtifactError(f"rebuild needed: stage {stage} was built for backend {backend!r}, which this "
                                    "engine cannot run here (build with --backend onnx, compile or eager)")
    return functions


def _install(model: GLPModel, functions: dict, shape: BuildShape) -> None:
    config = model.config
    if "adapter" in functions:
        model.adapter = StagedAdapter(model.adapter, functions["adapter"])
    if "denoise" in functions:
        model.video_decoder = StagedVideoDecoder(model.video_decoder, functions["denoise"], shape, config)
    if "vae_decode" in functions:
        model.vae = StagedVAE(model.vae, functions["vae_decode"], shape, config)
    if "prefill" in functions or "decode" in functions:
        model.backbone = StagedBackbone(model.backbone, functions.get("prefill"), functions.get("decode"))


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[GLPModel, Manifest]:
    """Verify, then load the artifact at `directory`. Raises `ArtifactError("rebuild needed: ...")`."""
    directory = Path(directory)
    device = torch.device(device)
    manifest = verify(directory, device)
    config = ModelConfig.from_dict(manifest.factors.config)
    policy = PrecisionPolicy.from_dict(manifest.factors.precision)
    processor = AutoProcessor.from_pretrained(directory / PROCESSOR_DIR)
    with torch.random.fork_rng(devices=[]):  # the skeleton's throw-away init must not move the caller's RNG
        model = GLPModel.build(config, processor)
    apply_policy(model.components(), policy)
    for name, module in model.components().items():
        tensors, _ = read_safetensors(directory / name / WEIGHTS_FILE)
        load_strict(module, tensors, f"artifact component {name}")
    shape = BuildShape(**manifest.factors.shapes["build"])
    _install(model, _stage_functions(model, manifest, directory, shape, device), shape)
    log.info("loaded artifact %s (%s, %s) from %s", manifest.key[:12], manifest.factors.backend, policy.name,
             directory)
    return model, manifest
