"""`build()`: a model source -> an artifact directory (`artifact.py`) the engine loads with `Engine.load(DIR)`.

Order: capability check (fails at once) -> load the fp32 reference -> resolve the plan and its key -> cache
lookup under a file lock -> write weights / ONNX / FP8 scales into a temp dir -> accuracy gate through the
engine's loader -> manifest last -> rename into place.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifact import ComponentEntry, Manifest, build_atomically, cached, write_manifest
from ..backends import Backend
from ..device import resolve_device
from ..models.export_spec import BuildShape, export_specs
from ..models.glp import GLPModel
from ..precision import Precision, PrecisionPolicy, apply_policy
from . import fp8
from .accuracy import AccuracyReport, AccuracyThresholds
from .calibration import CalibrationSample, calibration_batches
from .exporters import EXPORTERS, write_stages, write_weights
from .gate import enforce, measure
from .plan import BuildPlan, resolve_plan
from .progress import BuildProgress
from .source import ModelSource, weights_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildResult:
    directory: Path
    key: str
    cache_hit: bool
    plan: BuildPlan
    manifest: Manifest | None  # None for a dry run
    accuracy: AccuracyReport | None
    seconds: float


def check_backend_available(backend: str | Backend, device: str) -> None:
    """Fail at once, before any work, when `backend` cannot run on `device` here; the message names what is
    missing (the device, packages)."""
    spec = Backend.parse(backend).spec
    spec.require(device)  # tensorrt names a missing CUDA device itself, with the other missing pieces
    resolve_device(device)


def resolve_policy(precision: str | Precision | PrecisionPolicy, backend: str | Backend,
                   device: str) -> PrecisionPolicy:
    """The policy to build: the requested precision's default policy, with fp8's sensitive layers kept in what
    the backend runs on `device` (fp32 on ONNX Runtime's CPU provider); refused when the backend cannot run it."""
    spec = Backend.parse(backend).spec
    if isinstance(precision, PrecisionPolicy):
        policy = precision
    else:
        policy = PrecisionPolicy.for_precision(precision, high=spec.high_precision(device))
    spec.check_policy(policy, device)
    return policy


def build(source: ModelSource | GLPModel, out_dir: str | Path, *, backend: str | Backend = "eager",
          precision: str | Precision | PrecisionPolicy = "fp32", shape: BuildShape | None = None,
          steps: int | None = None, calibration: list[CalibrationSample] | None = None, gate: bool = True,
          thresholds: AccuracyThresholds | None = None, device: str = "cpu", dry_run: bool = False,
          stages: tuple[str, ...] | None = None, progress: bool = False) -> BuildResult:
    """Build (or find in the cache) the artifact for `source` at `out_dir`. See the module docstring.
    `progress`: a bar over the build's steps on stderr (shown only when stderr is a terminal)."""
    start = time.perf_counter()
    check_backend_available(backend, device)
    policy = resolve_policy(precision, backend, device)
    with BuildProgress(progress) as bar:
        with bar.step("load model"):
            reference = source if isinstance(source, GLPModel) else source.load()
        if reference.device.type != "cpu":  # export, calibration and ONNX checks run on the CPU; `device` the target
            reference = copy.deepcopy(reference).to("cpu")
        shape = shape or BuildShape.for_config(reference.config)
        fp8_stages = [s for s in export_specs(reference.config).values()
                      if policy.of(s.component) == Precision.FP8 and (stages is None or s.name in stages)]
        with bar.step("plan"):
            batches = calibration_batches(reference, fp8_stages, shape, calibration) if fp8_stages else {}
            calib_hash = fp8.batches_digest(b for st in sorted(batches) for b in batches[st]) if batches else None
            plan = resolve_plan(reference, weights_hash(reference), backend, policy, shape, device, calib_hash,
                                stages)
        out_dir = Path(out_dir)
        if dry_run:
            return BuildResult(out_dir, plan.key, cached(out_dir, plan.key) is not None, plan, None, None,
                               time.perf_counter() - start)
        exports = sum(s.backend in EXPORTERS for s in plan.stages.values())
        bar.expect(2 + 1 + bool(fp8_stages) + exports + 1)  # load, plan; weights; calibrate; exports; gate
        report: list[AccuracyReport] = []

        def write(tmp: Path) -> Manifest:
            with bar.step("weights"):
                model = copy.deepcopy(reference)
                apply_policy(model.components(), policy)
                write_weights(model, tmp)
            with bar.step("fp8 calibration") if fp8_stages else contextlib.nullcontext():
                scales = _calibrate(model, fp8_stages, shape, batches, policy, tmp)
            stages = write_stages(model, plan, tmp, scales, bar.step)
            components = {name: ComponentEntry(policy.of(name).value, stages[name]) for name in model.components()}
            manifest = Manifest(plan.key, plan.factors, components)
            manifest.report["build_seconds"] = round(time.perf_counter() - start, 3)
            write_manifest(tmp, manifest)  # the loader verifies it; rewritten below with the accuracy report
            with bar.step("accuracy gate"):
                accuracy = measure(reference, tmp, shape, policy, steps, device)
            manifest.report["accuracy"] = accuracy.to_dict()
            report.append(accuracy)
            if gate:
                enforce(accuracy, policy, reference.config, thresholds)
            else:
                log.warning("accuracy gate skipped (--no-gate); measured:\n%s", accuracy.table())
            return manifest

        manifest, hit = build_atomically(out_dir, plan.key, write)
    accuracy = report[0] if report else AccuracyReport.from_dict(manifest.report["accuracy"])
    if hit and gate:
        # an artifact built earlier with --no-gate (or laxer thresholds) must not pass a gated build silently
        enforce(accuracy, policy, reference.config, thresholds)
    log.info("%s %s (%s, %s) in %.1fs", "cache hit" if hit else "built", out_dir, plan.backend.value, policy.name,
             time.perf_counter() - start)
    return BuildResult(out_dir, plan.key, hit, plan, manifest, accuracy, time.perf_counter() - start)


def _calibrate(model: GLPModel, stages, shape: BuildShape, batches: dict[str, list], policy: PrecisionPolicy,
               out: Path) -> dict[str, Any]:
    """FP8 scales per stage (saved as `<component>/<stage>.fp8.safetensors`), calibrated on the stage wrapper so
    the layer names match the exported graph; layers the policy keeps high are skipped."""
    scales = {}
    for spec in stages:
        module = spec.wrap(model, shape).eval()
        stage_scales = fp8.calibrate(module, batches[spec.name], skip=lambda name, layer: policy.keeps_high(name))
        stage_scales.save(out / spec.component / f"{spec.name}.fp8.safetensors")
        scales[spec.name] = stage_scales
    return scales


__all__ = ["BuildResult", "build", "resolve_policy"]
