"""Load a built artifact (`foresight-engine build`): the eager weights as a `GLPModel` on the device, plus the
built stages, each loaded by its backend's runner (`runners/`).

Order matters: `artifact.verify` checks the artifact whole (manifest digest and key, stage backends, versions,
device, every path confined and listed, every file's size and sha256, nothing unlisted) and the manifest's typed
parts (config, precision policy, build shape, components) are parsed before anything is deserialized (safetensors,
ONNX, plans, processor files); weights move to the device once, after the precision policy is applied.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoProcessor

from .. import int8_linear
from ..artifact import PROCESSOR_DIR, Manifest, verify, weights_file
from ..backends import Backend
from ..config import ModelConfig
from ..device import resolve_device
from ..errors import ArtifactError, ConfigError
from ..models.export_spec import BuildShape, denoise_ops_of
from ..models.glp import GLPModel
from ..models.weights import load_strict, read_safetensors
from ..precision import COMPONENTS, Precision, PrecisionPolicy, apply_policy
from . import runners
from .runners import BuiltStages, RunnerContext

log = logging.getLogger(__name__)


def _typed_factors(manifest: Manifest) -> tuple[ModelConfig, PrecisionPolicy, BuildShape]:
    """The manifest's config, precision policy and build shape, checked (before any file is read)."""
    factors = manifest.factors
    try:
        config = ModelConfig.from_dict(factors.config)
        policy = PrecisionPolicy.from_dict(factors.precision)
        shape = BuildShape(**factors.shapes["build"])
        shape.check(config)
    except (ConfigError, TypeError, KeyError, ValueError) as exc:
        raise ArtifactError(f"rebuild needed: the manifest's factors do not describe a model this engine builds "
                            f"({type(exc).__name__}: {exc})") from None
    expected = {c for c in COMPONENTS if c != "spatial_encoder" or config.spatial_encoder is not None}  # optional
    if set(manifest.components) != expected:
        raise ArtifactError(f"rebuild needed: the manifest lists components {sorted(manifest.components)}, this "
                            f"engine loads {sorted(expected)}")
    return config, policy, shape


def load_artifact(directory: str | Path, device: str | torch.device | None = None, digest: str | None = None
                  ) -> tuple[GLPModel, BuiltStages | None, Manifest]:
    """Verify, then load the artifact at `directory` for `device` (default: the CPU); `digest`: the manifest digest
    the caller trusts (`foresight-engine inspect` shows it), refused when it differs. Raises
    `ArtifactError("rebuild needed: ...")`; `built` is None when every stage runs eager."""
    directory = Path(directory)
    device = resolve_device(device)
    manifest = verify(directory, device, digest)
    config, policy, shape = _typed_factors(manifest)
    # every file in processor/ is listed and hashed (verify refuses unlisted ones); never a download
    processor = AutoProcessor.from_pretrained(directory / PROCESSOR_DIR, local_files_only=True)
    with torch.random.fork_rng(devices=[]):  # the skeleton's throw-away init must not move the caller's RNG
        model = GLPModel.build(config, processor)
    apply_policy(model.components(), policy)
    for name, module in model.components().items():
        tensors, _ = read_safetensors(directory / weights_file(name))
        if policy.of(name) == Precision.INT8:  # its calibrated Linears are stored quantized
            int8_linear.shells(module, int8_linear.int8_layers(tensors))
        load_strict(module, tensors, f"artifact component {name}")
    model.to(device)
    context = RunnerContext(directory, device, model, shape, policy, manifest.factors.options)
    entries = {name: entry for name, entry in manifest.stages.items() if entry.built}
    built = None
    if entries:
        built = BuiltStages({name: runners.load(name, entry, context) for name, entry in entries.items()}, shape,
                            {name: Backend(entry.backend) for name, entry in entries.items()},
                            denoise_ops_of(manifest.factors.options))
    log.info("loaded artifact %s (%s, %s) from %s onto %s", manifest.key[:12], manifest.factors.backend, policy.name,
             directory, device)
    return model, built, manifest
