"""What each backend writes into an artifact's component folders (the build side of the backend registry).

Every artifact holds each component's weights (in the component's precision) and the processor; `eager` and
`compile` add nothing (compile's options are in the manifest: the engine compiles at load). `EXPORTERS[backend]`
writes a built stage's files and returns its `StageEntry`: `onnx` an `<stage>.onnx` graph checked against the eager
stage in ONNX Runtime (with float8 Q/DQ nodes under FP8); `tensorrt` that graph plus a TensorRT plan.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from torch.export import Dim

from .. import kernels
from ..artifact import PROCESSOR_DIR, StageEntry, stage_file, weights_file
from ..backends import Backend
from ..engine.runners.onnx import OnnxStage
from ..models.export_spec import ExportSpec, export_specs
from ..models.glp import GLPModel
from ..models.weights import save_safetensors
from . import fp8, tensorrt
from .accuracy import relative_l2
from .plan import BuildPlan, StagePlan

log = logging.getLogger(__name__)

# TensorRT timing caches live outside artifacts (reused across builds); their name carries TensorRT version + SM.
TIMING_CACHE_DIR = Path.home() / ".cache" / "foresight-engine" / "tensorrt"


def write_weights(model: GLPModel, out: Path) -> None:
    """Processor files and every component's state dict (already cast to its precision)."""
    model.processor.save_pretrained(out / PROCESSOR_DIR)
    for name, module in model.components().items():
        (out / name).mkdir(parents=True, exist_ok=True)
        save_safetensors(module.state_dict(), out / weights_file(name), {"component": name})


def _dynamic_shapes(spec: ExportSpec) -> tuple[Any, ...]:
    """torch.export dynamic shapes from the spec's named dynamic axes (one Dim object per axis name)."""
    dims: dict[str, Any] = {}
    return tuple({axis: dims.setdefault(label, Dim.DYNAMIC) for axis, label in spec.dynamic_axes[n].items()}
                 if n in spec.dynamic_axes else None for n in spec.input_names)


@contextlib.contextmanager
def _quiet(*loggers: str):
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@dataclasses.dataclass(frozen=True)
class ExportJob:
    """One stage to export: the model (in its build precision), its spec and plan, where to write, its FP8 scales."""

    model: GLPModel
    spec: ExportSpec
    stage: StagePlan
    plan: BuildPlan
    out: Path
    scales: fp8.Fp8Scales | None = None

    @property
    def cache_dtype(self) -> torch.dtype:
        return self.plan.policy.dtype(self.spec.component)


def export_onnx(job: ExportJob, entry: StageEntry) -> StageEntry:
    """Export one stage with torch.onnx (dynamo); with FP8 scales, insert float8 Q/DQ in front of the calibrated
    Linears. Then run it in ONNX Runtime on fresh sample inputs against the eager stage (FP8-simulated when
    quantized: the two must agree to fp32 rounding)."""
    spec, shape = job.spec, job.plan.shape
    module = spec.wrap(job.model, shape).eval()
    rel = stage_file(spec.component, spec.name, ".onnx")
    path = job.out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()), _quiet("onnx_ir", "onnxscript"):  # the exporter is chatty
        torch.onnx.export(module, spec.sample_inputs(shape, cache_dtype=job.cache_dtype), str(path),
                          input_names=list(spec.input_names), output_names=list(spec.output_names), dynamo=True,
                          dynamic_shapes=_dynamic_shapes(spec), opset_version=job.plan.factors.options["opset"],
                          external_data=False,
                          custom_translation_table=kernels.onnx_translations())  # custom ops -> standard ops
    changes: dict[str, Any] = {"file": rel}
    if job.scales is not None:
        fp8.insert_qdq(path, job.scales, out_path=path)
        module = fp8.apply_fp8_simulation(copy.deepcopy(module), job.scales)
        changes.update(fp8_scales=stage_file(spec.component, spec.name, ".fp8.safetensors"),
                       fp8_layers=len(job.scales))
    check = spec.sample_inputs(shape, seed=1, cache_dtype=job.cache_dtype)
    with torch.inference_mode():
        expected = module(*check)
    got = OnnxStage(path, quantized=job.scales is not None)(*check)
    expected, got = (x if isinstance(x, tuple) else (x,) for x in (expected, got))
    changes["ort_vs_eager"] = {name: relative_l2(g, e.float()) for name, g, e in
                               zip(spec.output_names, got, expected) if e.is_floating_point()}
    log.info("exported %s -> %s; ONNX Runtime vs eager relative L2 %s", spec.name, rel, changes["ort_vs_eager"])
    return dataclasses.replace(entry, **changes)


def export_tensorrt(job: ExportJob, entry: StageEntry) -> StageEntry:
    """The ONNX graph, then a strongly typed TensorRT plan from it (precision from the graph's types and its
    float8 Q/DQ nodes). GPU only."""
    entry = export_onnx(job, entry)
    config = tensorrt.TensorRTBuildConfig.from_profile(job.stage.profile)
    rel = stage_file(job.spec.component, job.spec.name, ".plan")
    tensorrt.build_engine(job.out / entry.file, config, job.out / rel, timing_cache_dir=TIMING_CACHE_DIR)
    return dataclasses.replace(entry, engine=rel, tensorrt_config=config.to_dict())


# backend -> how it writes a built stage; backends absent here write nothing but the weights
EXPORTERS: dict[Backend, Callable[[ExportJob, StageEntry], StageEntry]] = {
    Backend.ONNX: export_onnx,
    Backend.TENSORRT: export_tensorrt,
}


def write_stages(model: GLPModel, plan: BuildPlan, out: Path, scales: dict[str, fp8.Fp8Scales],
                 step: Callable[[str], ContextManager] = lambda what: contextlib.nullcontext()
                 ) -> dict[str, dict[str, StageEntry]]:
    """{component: {stage: entry}}; writes each built stage's files through its backend's exporter. `step(what)`
    wraps each export (the build's progress bar)."""
    specs = export_specs(model.config)
    components: dict[str, dict[str, StageEntry]] = {name: {} for name in model.components()}
    for name, stage in plan.stages.items():
        # what the stage really runs in: fp8 only where it was calibrated and got Q/DQ nodes
        precision = "fp8" if name in scales else str(plan.policy.dtype(stage.component)).removeprefix("torch.")
        entry = StageEntry(backend=stage.backend.value, precision=precision,
                           profile=stage.to_dict()["profile"], reason=stage.reason)
        exporter = EXPORTERS.get(stage.backend)
        if exporter is not None:
            with step(f"export {name}"):
                entry = exporter(ExportJob(model, specs[name], stage, plan, out, scales.get(name)), entry)
        components[stage.component][name] = entry
    return components


__all__ = ["EXPORTERS", "ExportJob", "TIMING_CACHE_DIR", "write_stages", "write_weights"]
