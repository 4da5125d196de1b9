"""Accuracy of a built artifact against the eager fp32 model, measured through the engine's own loader.

End to end: `Engine.predict` on a fixed probe set (`probes.py`: seeded images at the built image size, fixed
prompts, seed 2) at the build shape, artifact vs reference: mean frame PSNR and mean token agreement. Per stage:
the inputs the reference's own stage functions receive during those probe requests (recorded at the stage
boundary: real activations, the denoising step at several points of the trajectory, decode steps on the real KV
cache) through the artifact's stage and the reference's (relative L2, cosine over all floating outputs). Both sides
run on the artifact's device: a GPU build is checked on the GPU against the reference moved to the GPU (never
through a CPU provider). FP8 calibration runs the same requests with another noise seed.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from ..config import ModelConfig
from ..engine import Engine
from ..engine.artifact_loader import load_artifact
from ..engine.runners import BuiltStages
from ..models.export_spec import BuildShape, export_specs
from ..models.glp import GLPModel
from ..precision import COMPONENTS, Precision, PrecisionPolicy
from .accuracy import AccuracyReport, AccuracyThresholds, ComponentAccuracy, check_gate, psnr, token_agreement
from .calibration import StageRecorder
from .probes import PROBE_PROMPTS, PROBE_SEED, probe_images, probe_settings

# stage calls compared per probe request: the decode steps carry the whole KV cache buffer, so fewer of them
STAGE_CALLS = {"denoise": 4, "decode": 2}

def _floats(result) -> torch.Tensor:
    outputs = result if isinstance(result, (tuple, list)) else (result,)
    return torch.cat([o.detach().double().reshape(-1) for o in outputs if o.is_floating_point()])


def lowest_precision(policy: PrecisionPolicy) -> Precision:
    order = [Precision.FP32, Precision.FP16, Precision.BF16, Precision.INT8, Precision.FP8]  # increasing tolerance
    return max((policy.of(c) for c in COMPONENTS), key=order.index)


def measure(reference: GLPModel, artifact: Path, shape: BuildShape, policy: PrecisionPolicy,
            steps: int | None = None, device: str = "cpu") -> AccuracyReport:
    """The artifact at `artifact`, loaded through the engine's loader onto `device`, against `reference` moved to
    that device."""
    loaded, built, _ = load_artifact(artifact, device)
    if reference.device != loaded.device:
        reference = copy.deepcopy(reference).to(loaded.device)
    with torch.inference_mode():
        return _measure(reference, loaded, built, shape, policy, steps)


def _measure(reference: GLPModel, loaded: GLPModel, built: BuiltStages | None, shape: BuildShape,
             policy: PrecisionPolicy, steps: int | None) -> AccuracyReport:
    specs = export_specs(reference.config)
    recorder = StageRecorder(reference, list(specs.values()), shape, limit=STAGE_CALLS)
    artifact = Engine(loaded, built=built)
    psnrs, agreements = [], []
    for image, prompt in zip(probe_images(shape), PROBE_PROMPTS):
        want = recorder.predict(image, prompt, **probe_settings(shape, steps))
        got = artifact.predict(image, prompt, **probe_settings(shape, steps))
        psnrs.append(psnr(got.frames, want.frames))
        agreements.append(token_agreement(got.token_ids, want.token_ids))
    functions = built.functions if built is not None else {}
    # a built static whole step (compile) takes other inputs than the recorded forward: its seeded sample inputs
    static = {} if built is None or not built.static_denoise else \
        {"denoise": export_specs(reference.config, built.denoise_ops)["denoise"]}
    components = []
    for name, spec in specs.items():
        spec = static.get(name, spec)
        calls = [spec.sample_inputs(shape, seed=PROBE_SEED)] if name in static else recorder.inputs[name]
        expected_fn = spec.wrap(reference, shape)
        # the built stage's function, or the artifact's weights in the eager stage wrapper
        function = functions[name] if name in functions else spec.wrap(loaded, shape)
        expected = torch.cat([_floats(expected_fn(*(x.to(reference.device) for x in inputs))) for inputs in calls])
        got = torch.cat([_floats(function(*(x.to(loaded.device) for x in inputs))) for inputs in calls])
        components.append(ComponentAccuracy.measure(name, got, expected))
    return AccuracyReport(lowest_precision(policy).value, tuple(components), frame_psnr=float(np.mean(psnrs)),
                          token_agreement=float(np.mean(agreements)))


def enforce(report: AccuracyReport, policy: PrecisionPolicy, config: ModelConfig,
            thresholds: AccuracyThresholds | None = None) -> None:
    """Raise `AccuracyGateError` on any miss. Each stage is held to its own component's precision (a VAE kept
    in bf16 inside an fp8 build meets bf16's limits); `thresholds`, when given, replaces all of them."""
    specs = export_specs(config)
    per_component = {c.name: thresholds or AccuracyThresholds.for_precision(policy.of(specs[c.name].component).value)
                     for c in report.components}
    check_gate(report, thresholds, per_component=per_component)


__all__ = ["STAGE_CALLS", "enforce", "measure"]
