"""Accuracy of a built artifact against the eager fp32 model, measured through the engine's own loader.

Per stage: its sample inputs (seed 2, not the ones used for export checks or calibration) through the artifact and
through the fp32 reference (relative L2, cosine over all floating outputs). End to end: `Engine.predict` on a
fixed probe set (seeded images, fixed prompts) at the build shape: mean frame PSNR and mean token agreement.
"""
from __future__ import annotations

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

PROBE_PROMPTS = ("What happens next?", "Describe the motion in this scene.")
PROBE_SEED = 2


def probe_images(count: int = len(PROBE_PROMPTS)) -> list[np.ndarray]:
    """The fixed probe images: seeded uint8 noise with a gradient (so the VAE sees structure)."""
    images = []
    for i in range(count):
        rng = np.random.default_rng(1000 + i)
        ramp = np.linspace(0, 255, 96, dtype=np.float32)[None, :, None]
        images.append(np.clip(ramp * 0.6 + rng.integers(0, 100, (72, 96, 3)), 0, 255).astype(np.uint8))
    return images


def _floats(result) -> torch.Tensor:
    outputs = result if isinstance(result, (tuple, list)) else (result,)
    return torch.cat([o.detach().double().reshape(-1) for o in outputs if o.is_floating_point()])


def lowest_precision(policy: PrecisionPolicy) -> Precision:
    order = [Precision.FP32, Precision.FP16, Precision.BF16, Precision.INT8, Precision.FP8]  # increasing tolerance
    return max((policy.of(c) for c in COMPONENTS), key=order.index)


def measure(reference: GLPModel, artifact: Path, shape: BuildShape, policy: PrecisionPolicy,
            steps: int | None = None, device: str = "cpu") -> AccuracyReport:
    """The artifact at `artifact`, loaded through the engine's loader onto `device`, against `reference`."""
    loaded, built, _ = load_artifact(artifact, device)
    with torch.inference_mode():
        return _measure(reference, loaded, built, shape, policy, steps)


def _measure(reference: GLPModel, loaded: GLPModel, built: BuiltStages | None, shape: BuildShape,
             policy: PrecisionPolicy, steps: int | None) -> AccuracyReport:
    components = []
    functions = built.functions if built is not None else {}
    for name, spec in export_specs(reference.config, built.denoise_ops if built is not None else None).items():
        inputs = spec.sample_inputs(shape, seed=PROBE_SEED)
        expected = _floats(spec.wrap(reference, shape)(*(x.to(reference.device) for x in inputs)))
        # the built stage's function, or the artifact's weights in the eager stage wrapper
        function = functions[name] if name in functions else spec.wrap(loaded, shape)
        got = _floats(function(*(x.to(loaded.device) for x in inputs)))
        components.append(ComponentAccuracy.measure(name, got, expected))
    psnrs, agreements = [], []
    settings = dict(height=shape.height, width=shape.width, num_frames=shape.num_frames, num_inference_steps=steps,
                    guidance_scale=2.0 if shape.guidance else 1.0, frame_rate=shape.frame_rate, seed=PROBE_SEED)
    for image, prompt in zip(probe_images(), PROBE_PROMPTS):
        want = Engine(reference).predict(image, prompt, **settings)
        got = Engine(loaded, built=built).predict(image, prompt, **settings)
        psnrs.append(psnr(got.frames, want.frames))
        agreements.append(token_agreement(got.token_ids, want.token_ids))
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


__all__ = ["PROBE_PROMPTS", "enforce", "measure", "probe_images"]
