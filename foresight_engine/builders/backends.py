"""What each backend writes into an artifact's component folders.

Every artifact holds each component's weights (`<component>/weights.safetensors`, in the component's precision)
and the processor; `compile` adds nothing (its options are in the manifest: the engine compiles at load);
`onnx` adds `<component>/<stage>.onnx` per exported stage, each checked against the eager stage in ONNX Runtime.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from torch.export import Dim

from ..engine.artifact_loader import PROCESSOR_DIR, WEIGHTS_FILE
from ..engine.stage_shims import OnnxStage
from ..errors import BackendUnavailable, ConfigError
from ..models.export_spec import BuildShape, ExportSpec, export_specs
from ..models.glp import GLPModel
from ..models.weights import save_safetensors
from . import fp8, tensorrt
from .accuracy import relative_l2
from .plan import BuildPlan

log = logging.getLogger(__name__)

# TensorRT timing caches live outside artifacts (reused across builds); their name carries TensorRT version + SM.
TIMING_CACHE_DIR = Path.home() / ".cache" / "foresight-engine" / "tensorrt"


def check_backend_available(backend: str, device: str) -> None:
    """Fail at once, before any work, when `backend` cannot run here; the message names what is missing."""
    if backend == "tensorrt":
        tensorrt.require_tensorrt()  # the one capability check of the GPU-only layer
    if backend == "onnx":
        for package in ("onnx", "onnxruntime", "onnxscript"):
            try:
                __import__(package)
            except ImportError:
                raise BackendUnavailable(f"--backend onnx needs the `{package}` package "
                                          "(pip install 'foresight-engine[onnx]')") from None
    if device != "cpu" and not torch.cuda.is_available():
        raise BackendUnavailable(f"device {device!r} requested but torch.cuda.is_available() is False")


def check_precision_supported(backend: str, plan_policy, device: str) -> None:
    """ONNX Runtime's CPU provider has no bf16/fp16 kernels for most ops: refuse instead of running slower fp32."""
    if backend == "onnx" and device == "cpu":
        low = sorted({p.value for p in (plan_policy.of(c) for c in ("backbone", "adapter", "video_decoder", "vae"))
                      if p.value in ("bf16", "fp16")})
        if low:
            raise ConfigError(f"--backend onnx on the CPU runs fp32 (and fp8 Q/DQ graphs for TensorRT); precision "
                              f"{low} has no ONNX Runtime CPU kernels: use --backend compile or eager for it")


def write_weights(model: GLPModel, out: Path) -> None:
    """Processor files and every component's state dict (already cast to its precision)."""
    model.processor.save_pretrained(out / PROCESSOR_DIR)
    for name, module in model.components().items():
        (out / name).mkdir(parents=True, exist_ok=True)
        save_safetensors(module.state_dict(), out / name / WEIGHTS_FILE, {"component": name})


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


def export_onnx(model: GLPModel, spec: ExportSpec, shape: BuildShape, path: Path, opset: int,
                scales: fp8.Fp8Scales | None = None) -> dict[str, Any]:
    """Export one stage with torch.onnx (dynamo); with FP8 `scales`, insert float8 Q/DQ in front of the calibrated
    Linears. Then run it in ONNX Runtime on fresh sample inputs against the eager stage (FP8-simulated when
    quantized: the two must agree to fp32 rounding). Returns the stage's manifest entry."""
    module = spec.wrap(model, shape).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()), _quiet("onnx_ir", "onnxscript"):  # the exporter is chatty
        torch.onnx.export(module, spec.sample_inputs(shape), str(path), input_names=list(spec.input_names),
                          output_names=list(spec.output_names), dynamo=True, dynamic_shapes=_dynamic_shapes(spec),
                          opset_version=opset, external_data=False)
    entry: dict[str, Any] = {"backend": "onnx", "file": f"{spec.component}/{path.name}"}
    if scales is not None:
        fp8.insert_qdq(path, scales, out_path=path)
        module = fp8.apply_fp8_simulation(copy.deepcopy(module), scales)
        entry.update(fp8_scales=f"{spec.component}/{spec.name}.fp8.safetensors", fp8_layers=len(scales))
    check = spec.sample_inputs(shape, seed=1)
    with torch.inference_mode():
        expected = module(*check)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = OnnxStage(path, quantized=scales is not None)(*check)
    entry["ort_vs_eager"] = {name: relative_l2(g, e.float()) for name, g, e in
                             zip(spec.output_names, got, expected) if e.is_floating_point()}
    log.info("exported %s -> %s; ONNX Runtime vs eager relative L2 %s", spec.name, path.name, entry["ort_vs_eager"])
    return entry


EXPORTING_BACKENDS = ("onnx", "tensorrt")  # backends whose stages are exported (and so take time) at build


def write_stages(model: GLPModel, plan: BuildPlan, out: Path, scales: dict[str, fp8.Fp8Scales],
                 step: Callable[[str], ContextManager] = lambda what: contextlib.nullcontext()
                 ) -> dict[str, dict[str, Any]]:
    """Component manifest entries: {component: {precision, stages: {stage: entry}}}; writes the ONNX files.
    `step(what)` wraps each export (the build's progress bar)."""
    specs = export_specs(model.config)
    components: dict[str, dict[str, Any]] = {name: {"precision": plan.policy.of(name).value, "stages": {}}
                                             for name in model.components()}
    for name, stage in plan.stages.items():
        # what the stage really runs in: fp8 only where it was calibrated and got Q/DQ nodes
        entry = stage.to_dict() | {"precision": "fp8" if name in scales else
                                   str(plan.policy.dtype(stage.component)).removeprefix("torch.")}
        if stage.backend in EXPORTING_BACKENDS:
            with step(f"export {name}"):
                onnx_path = out / stage.component / f"{name}.onnx"
                entry.update(export_onnx(model, specs[name], plan.shape, onnx_path, plan.factors.options["opset"],
                                         scales.get(name)))
                if stage.backend == "tensorrt":
                    # strongly typed: precision comes from the graph's types and its float8 Q/DQ nodes
                    config = tensorrt.TensorRTBuildConfig.from_profile(stage.profile)
                    engine_path = tensorrt.build_engine(onnx_path, config, onnx_path.with_suffix(".plan"),
                                                        timing_cache_dir=TIMING_CACHE_DIR)
                    entry.update(backend="tensorrt", engine=f"{stage.component}/{engine_path.name}",
                                 tensorrt_config=config.to_dict())
        components[stage.component]["stages"][name] = entry
    return components
