"""`build()`: a model source -> an artifact directory (`artifact.py`) the engine loads with `Engine.load(DIR)`.

Order: capability check (fails at once) -> load the fp32 reference -> FP8 calibration sets (real requests' stage
inputs) -> resolve the plan and its key -> cache lookup under a file lock -> write weights / graphs / programs /
plans / FP8 scales into a temp dir -> accuracy gate through the engine's loader, on the target device against the
reference on that device -> manifest last -> rename into place.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..artifact import ComponentEntry, Manifest, build_atomically, cached, write_manifest
from ..backends import Backend
from ..device import resolve_device
from ..errors import ConfigError
from ..models.export_spec import BuildShape, export_specs
from ..models.glp import GLPModel
from .. import int8_linear
from ..precision import COMPONENTS, Precision, PrecisionPolicy, apply_policy
from . import fp8, int8
from .accuracy import AccuracyReport, AccuracyThresholds
from .calibration import CalibrationSample, calibration_batches
from .exporters import EXPORTERS, write_stages, write_weights
from .gate import enforce, measure
from .plan import BuildPlan, resolve_plan
from .quantization import StageQuantization, calibrate_stage, resolve_calibrator
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


def resolve_policy(precision: str | Precision | PrecisionPolicy, backend: str | Backend, device: str, *,
                   fp8_kv_cache: bool = False, fp8_attention: bool = False) -> PrecisionPolicy:
    """The policy to build: the requested precision's default policy, with fp8's sensitive layers kept in what
    the backend runs on `device` (fp32 on ONNX Runtime's CPU provider); refused when the backend cannot run it."""
    backend = Backend.parse(backend)
    spec = backend.spec
    if isinstance(precision, PrecisionPolicy):
        policy = precision
    else:
        policy = PrecisionPolicy.for_precision(precision, high=spec.high_precision(device), fp8_kv_cache=fp8_kv_cache,
                                               fp8_attention=fp8_attention)
    spec.check_policy(policy, device)
    if (policy.fp8_kv_cache or policy.fp8_attention) and backend not in (Backend.ONNX, Backend.TENSORRT):
        raise ConfigError(f"--fp8-kv-cache/--fp8-attention put Q/DQ nodes around the attention of ONNX graphs: use "
                          f"--backend onnx or tensorrt, not {backend.value}")
    return policy


def build(source: ModelSource | GLPModel, out_dir: str | Path, *, backend: str | Backend = "eager",
          precision: str | Precision | PrecisionPolicy = "fp32", shape: BuildShape | None = None,
          steps: int | None = None, calibration: list[CalibrationSample] | None = None, gate: bool = True,
          thresholds: AccuracyThresholds | None = None, device: str = "cpu", dry_run: bool = False,
          stages: tuple[str, ...] | None = None, fp8_calibrator: str = "auto", fp8_kv_cache: bool = False,
          fp8_attention: bool = False, progress: bool = False) -> BuildResult:
    """Build (or find in the cache) the artifact for `source` at `out_dir`. See the module docstring.

    FP8: `calibration` (default: the accuracy probes' requests, run through the reference engine) gives each fp8
    stage's inputs across the whole denoising trajectory; `fp8_calibrator` `auto` uses NVIDIA ModelOpt where it is
    installed, else the project's max calibrator (`modelopt` / `max` to choose); `fp8_kv_cache` / `fp8_attention`
    quantize the attention too (ONNX / TensorRT graphs), held to the same gate.
    `progress`: a bar over the build's steps on stderr (shown only when stderr is a terminal)."""
    start = time.perf_counter()
    check_backend_available(backend, device)
    policy = resolve_policy(precision, backend, device, fp8_kv_cache=fp8_kv_cache, fp8_attention=fp8_attention)
    if any(policy.of(c) == Precision.INT8 for c in COMPONENTS):
        int8_linear.enable_kernels()  # raises naming torchao when it is missing, before any work
    with BuildProgress(progress) as bar:
        with bar.step("load model"):
            reference = source if isinstance(source, GLPModel) else source.load()
        if reference.device.type != "cpu":  # export and calibration run on the CPU; `device` is the target
            reference = copy.deepcopy(reference).to("cpu")
        shape = shape or BuildShape.for_config(reference.config)
        specs = export_specs(reference.config).values()
        fp8_stages = [s for s in specs if policy.of(s.component) == Precision.FP8
                      and (stages is None or s.name in stages)]
        # int8 is a property of the component's weights: every stage of an int8 component is calibrated
        int8_stages = [s for s in specs if policy.of(s.component) == Precision.INT8]
        calibrator = resolve_calibrator(fp8_calibrator) if fp8_stages else None
        with bar.step("plan"):
            batches = calibration_batches(reference, fp8_stages, shape, calibration) if fp8_stages else {}
            if int8_stages:  # default: the probe requests (int8's uniform grid needs real activation ranges)
                batches |= calibration_batches(reference, int8_stages, shape, calibration)
            calib_hash = None
            if batches:  # the calibrator is part of what the FP8 scales depend on
                calib_hash = fp8.batches_digest(b for st in sorted(batches) for b in batches[st])
                if calibrator is not None:
                    calib_hash = f"{calibrator}:" + calib_hash
            plan = resolve_plan(reference, weights_hash(reference), backend, policy, shape, device, calib_hash,
                                stages)
        out_dir = Path(out_dir)
        if dry_run:
            return BuildResult(out_dir, plan.key, cached(out_dir, plan.key) is not None, plan, None, None,
                               time.perf_counter() - start)
        exports = sum(s.backend in EXPORTERS for s in plan.stages.values())
        bar.expect(2 + 1 + bool(fp8_stages) + exports + 1)  # load, plan; weights (int8: quantize); calibrate; ...
        report: list[AccuracyReport] = []

        def write(tmp: Path) -> Manifest:
            with bar.step("weights"):
                model = copy.deepcopy(reference)
                apply_policy(model.components(), policy)
                if int8_stages:  # calibrated on the fp32 reference, quantized from the `high` weights
                    int8.quantize(model, int8.calibrate(reference, int8_stages, shape, batches, policy))
                write_weights(model, tmp)
            with bar.step("fp8 calibration") if fp8_stages else contextlib.nullcontext():
                quantized = _calibrate(model, fp8_stages, shape, batches, policy, calibrator)
            stages = write_stages(model, plan, tmp, quantized, bar.step)
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
               calibrator: str | None) -> dict[str, StageQuantization]:
    """FP8 data per stage, calibrated on the stage wrapper (in its build precision) so the layer names match the
    exported graph; layers the policy keeps high are skipped."""
    quantized = {}
    for spec in stages:
        kv_cache, attention = policy.fp8_attention_options(spec.component)
        quantized[spec.name] = calibrate_stage(spec.wrap(model, shape).eval(), batches[spec.name], policy.keep_high,
                                               calibrator=calibrator, kv_cache=kv_cache, attention=attention)
    return quantized


__all__ = ["BuildResult", "build", "resolve_policy"]
