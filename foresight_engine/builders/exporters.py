"""What each backend writes into an artifact's component folders (the build side of the backend registry).

Every artifact holds each component's weights (in the component's precision) and the processor; `eager` adds
nothing. `EXPORTERS[backend]` writes a built stage's files and returns its `StageEntry`:
- `compile`: an AOTInductor package `<stage>.pt2` (torch.export + inductor ahead of time, weights frozen in;
  loaded without compiling), checked against the eager stage;
One `torch.export` per stage feeds the others:
- `onnx`: `<stage>.onnx` (torch.onnx from the exported program, the custom ops translated to standard ones; float8
  Q/DQ under FP8), checked in ONNX Runtime on the CPU against the eager stage (FP8-simulated when quantized);
- `tensorrt`: the same graph, built into `<stage>.plan` (strongly typed: precision from the graph's types and Q/DQ
  nodes; one optimization profile from the stage's ExportSpec with `opt` at the built request shape), then checked
  ON THE GPU against the eager stage on the GPU (ONNX Runtime's CPU provider has no bf16 kernels and is not what
  runs);
- `torch-tensorrt`: the program saved as `<stage>.pt2`, compiled by Torch-TensorRT into `<stage>.trt.pt2`, checked
  on the GPU the same way.
Every exported stage's entry carries its I/O buffer plan (`engine/runners/buffers.py`), which the graph must match.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import io
import logging
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from torch import nn
from torch.export import Dim

from .. import int8_linear, kernels
from ..artifact import PROCESSOR_DIR, StageEntry, stage_file, weights_file
from ..backends import Backend
from ..engine.runners.buffers import BufferPlan
from ..engine.runners.onnx import OnnxStage
from ..models.export_spec import BuildShape, ExportSpec, denoise_ops_of, export_specs
from ..models.glp import GLPModel
from ..models.weights import save_safetensors
from ..precision import Precision
from . import fp8, tensorrt, torch_tensorrt
from .accuracy import relative_l2
from .fp8_attention import CUSTOM_TRANSLATIONS, Fp8AttentionStage
from .onnx_io import graph_io, save_onnx
from .plan import BuildPlan, StagePlan
from .quantization import StageQuantization

log = logging.getLogger(__name__)

# TensorRT timing caches live outside artifacts (reused across builds); their name carries TensorRT version + SM.
TIMING_CACHE_DIR = Path.home() / ".cache" / "foresight-engine" / "tensorrt"
CHECK_SEED = 1  # sample inputs of the export checks (calibration uses real requests, the gate seed 2)


def write_weights(model: GLPModel, out: Path) -> None:
    """Processor files and every component's state dict (already cast to its precision)."""
    model.processor.save_pretrained(out / PROCESSOR_DIR)
    for name, module in model.components().items():
        (out / name).mkdir(parents=True, exist_ok=True)
        save_safetensors(module.state_dict(), out / weights_file(name), {"component": name})


@contextlib.contextmanager
def _quiet(*loggers: str):
    saved = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporters are chatty
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@dataclasses.dataclass(frozen=True)
class ExportJob:
    """One stage to export: the model (in its build precision), its spec and plan, where to write, its FP8 data."""

    model: GLPModel
    spec: ExportSpec
    stage: StagePlan
    plan: BuildPlan
    out: Path
    quantization: StageQuantization | None = None

    @property
    def cache_dtype(self) -> torch.dtype:
        return self.plan.policy.dtype(self.spec.component)

    def module(self) -> nn.Module:
        """The eager stage wrapper over the build's weights."""
        return self.spec.wrap(self.model, self.plan.shape).eval()

    def exportable(self) -> nn.Module:
        return self.quantization.exportable(self.module()) if self.quantization else self.module()

    def reference(self) -> nn.Module:
        """What the built stage must compute: the eager stage, FP8-simulated when quantized."""
        return self.quantization.simulated(self.module()) if self.quantization else self.module()

    def sample_inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        return self.spec.sample_inputs(self.plan.shape, seed=seed, cache_dtype=self.cache_dtype)

    def file(self, suffix: str) -> str:
        return stage_file(self.spec.component, self.spec.name, suffix)

    def export(self) -> torch.export.ExportedProgram:
        module, dynamic = self.exportable(), self.spec.dynamic_shapes()
        if isinstance(module, Fp8AttentionStage):
            dynamic = (dynamic,)  # its forward takes *inputs: one entry holding every input's axes
        with torch.no_grad():
            return torch.export.export(module, self.sample_inputs(), dynamic_shapes=dynamic, strict=False)


def buffer_plan(job: ExportJob) -> BufferPlan:
    return BufferPlan.for_stage(job.spec, job.reference(), job.plan.shape, job.cache_dtype)


def _entry_with_plan(job: ExportJob, entry: StageEntry, buffers: BufferPlan) -> StageEntry:
    """The entry with the stage's buffer plan and its FP8 scale files."""
    changes: dict[str, Any] = {"buffers": buffers.to_dict()}
    if job.quantization is not None:
        changes |= job.quantization.save(job.out, job.spec.component, job.spec.name)
    return dataclasses.replace(entry, **changes)


def write_graph(job: ExportJob, entry: StageEntry) -> StageEntry:
    """`<stage>.onnx` from the stage's exported program (opset from the plan's options), float8 Q/DQ in front of
    the calibrated Linears under FP8, written once (`save_onnx`: a fresh external data file for large graphs)."""
    rel = job.file(".onnx")
    with _quiet("onnx_ir", "onnxscript"):
        program = torch.onnx.export(job.export(), (), input_names=list(job.spec.input_names),
                                    output_names=list(job.spec.output_names), dynamo=True,
                                    opset_version=job.plan.factors.options["opset"],
                                    custom_translation_table={**kernels.onnx_translations(), **CUSTOM_TRANSLATIONS})
    model = program.model_proto
    if job.quantization is not None:
        fp8.insert_qdq(model, job.quantization.scales, prefix=job.quantization.prefix, inplace=True)
    buffers = buffer_plan(job)
    buffers.check(graph_io(model), f"the exported graph of stage {job.spec.name}")  # what the GPU runner allocates
    save_onnx(model, job.out / rel)
    return dataclasses.replace(_entry_with_plan(job, entry, buffers), file=rel)


def compare(job: ExportJob, function: Callable, device: torch.device | str) -> dict[str, float]:
    """Relative L2 per floating output of `function` against the job's reference, both on `device`, on fresh
    sample inputs."""
    device = torch.device(device)
    reference = job.reference() if device.type == "cpu" else copy.deepcopy(job.reference()).to(device)
    inputs = tuple(x.to(device) for x in job.sample_inputs(seed=CHECK_SEED))
    with torch.inference_mode():
        expected, got = reference(*inputs), function(*inputs)
    expected, got = (x if isinstance(x, (tuple, list)) else (x,) for x in (expected, got))
    return {name: relative_l2(g.float().cpu(), e.float().cpu())
            for name, g, e in zip(job.spec.output_names, got, expected) if e.is_floating_point()}


def export_onnx(job: ExportJob, entry: StageEntry) -> StageEntry:
    """The graph, run in ONNX Runtime on the CPU against the eager stage (the two agree to fp32 rounding)."""
    entry = write_graph(job, entry)
    session = OnnxStage(job.out / entry.file, quantized=job.quantization is not None)
    entry = dataclasses.replace(entry, ort_vs_eager=compare(job, session, "cpu"))
    log.info("exported %s -> %s; ONNX Runtime vs eager relative L2 %s", job.spec.name, entry.file, entry.ort_vs_eager)
    return entry


def _gpu(job: ExportJob) -> torch.device:
    return torch.device(job.plan.factors.device.get("type", "cuda"))


def _export_dynamic_shapes(spec: ExportSpec, shape: BuildShape, module: torch.nn.Module) -> Any:
    """torch.export dynamic shapes from the spec's axis labels: one named `Dim` per label, bounded by the profile;
    a label `name+k` is that Dim plus k (the static step's tables have one row more than it has steps). Inputs a
    `*args` parameter collects are grouped as export expects."""
    if not spec.dynamic_axes:
        return None
    profile, dims, out = spec.profile(shape), {}, []
    for name in spec.input_names:
        axes = {}
        for axis, label in spec.dynamic_axes.get(name, {}).items():
            base, _, plus = label.partition("+")
            offset = int(plus or 0)
            least, _, most = (s[axis] for s in profile[name])
            dims.setdefault(base, Dim(base, min=least - offset, max=most - offset))
            axes[axis] = dims[base] + offset if offset else dims[base]
        out.append(axes or None)
    params = inspect.signature(module.forward).parameters.values()
    fixed = sum(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        out = out[:fixed] + [tuple(out[fixed:])]
    return tuple(out)


def _inductor_configs(options: dict[str, Any], device: str) -> dict[str, Any]:
    configs = {"freezing": options["freezing"], "max_autotune": options["max_autotune"]}
    if device == "cuda":
        configs["triton.cudagraphs"] = False  # the engine captures the whole denoising loop itself
    return configs


def export_aot(job: ExportJob, entry: StageEntry) -> StageEntry:
    """torch.export of the stage wrapper at the build shape (the static whole step for `denoise`), compiled ahead
    of time by AOTInductor into `<component>/<stage>.pt2` for the target device (weights frozen in: prepacked for
    oneDNN, int8 Linears turned into oneDNN int8 GEMMs), then run on fresh sample inputs against the eager stage."""
    spec, shape, factors = job.spec, job.plan.shape, job.plan.factors
    device = factors.device["type"]
    if job.plan.policy.of(spec.component) == Precision.INT8:
        int8_linear.enable_kernels()
    module = spec.wrap(job.model, shape).eval()
    if device != "cpu":  # compiled for the GPU it will run on (the build's model is a CPU copy)
        module = copy.deepcopy(module).to(device)
    inputs = tuple(x.to(device) for x in spec.sample_inputs(shape, cache_dtype=job.cache_dtype))
    rel = stage_file(spec.component, spec.name, ".pt2")
    path = job.out / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.export.export(module, inputs, dynamic_shapes=_export_dynamic_shapes(spec, shape, module),
                                      strict=False)
        torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                 inductor_configs=_inductor_configs(factors.options, device))
        check = tuple(x.to(device) for x in spec.sample_inputs(shape, seed=1, cache_dtype=job.cache_dtype))
        expected, got = module(*check), torch._inductor.aoti_load_package(str(path))(*check)
    expected, got = (tuple(x) if isinstance(x, (tuple, list)) else (x,) for x in (expected, got))
    errors = {name: relative_l2(g.float().cpu(), e.float().cpu()) for name, g, e in
              zip(spec.output_names, got, expected) if e.is_floating_point()}
    log.info("compiled %s -> %s; package vs eager relative L2 %s", spec.name, rel, errors)
    return dataclasses.replace(entry, file=rel, aot_vs_eager=errors)


def export_tensorrt(job: ExportJob, entry: StageEntry) -> StageEntry:
    """The graph, then a strongly typed TensorRT plan from it (GPU), checked on the GPU against eager on the GPU."""
    from ..engine.runners.tensorrt import SHARED_OUTPUTS, TensorRTStage
    entry = write_graph(job, entry)
    config = tensorrt.TensorRTBuildConfig.from_profile(job.stage.profile)
    rel = job.file(".plan")
    tensorrt.build_engine(job.out / entry.file, config, job.out / rel, timing_cache_dir=TIMING_CACHE_DIR)
    stage = TensorRTStage(job.out / rel, BufferPlan.from_dict(entry.buffers), _gpu(job),
                          shared_outputs=job.spec.name in SHARED_OUTPUTS)
    entry = dataclasses.replace(entry, engine=rel, tensorrt_config=config.to_dict(),
                                device_vs_eager=compare(job, stage, _gpu(job)))
    log.info("built %s -> %s; TensorRT vs eager (GPU) relative L2 %s", job.spec.name, rel, entry.device_vs_eager)
    return entry


def write_program(job: ExportJob, entry: StageEntry) -> StageEntry:
    """`<stage>.pt2`: the stage's torch.export program (ModelOpt's quantized copy under FP8), reloadable on the
    CPU with `torch.export.load`."""
    rel = job.file(".pt2")
    module = job.module()
    if job.quantization is not None:  # ModelOpt's fake-quantized copy: Torch-TensorRT makes its quantizers FP8
        from . import modelopt_fp8
        module = modelopt_fp8.with_scales(module, job.quantization.scales)
    with kernels.set_wiring("off"):  # aten ops only: Torch-TensorRT has no converter for the project's custom ops
        torch_tensorrt.export_program(module, job.spec, job.sample_inputs(), job.out / rel,
                                      modelopt=job.quantization is not None)
    return dataclasses.replace(_entry_with_plan(job, entry, buffer_plan(job)), program=rel)


def export_torch_tensorrt(job: ExportJob, entry: StageEntry) -> StageEntry:
    """The program, compiled by Torch-TensorRT (GPU), checked on the GPU against eager on the GPU."""
    from ..engine.runners.torch_tensorrt import load_program
    entry = write_program(job, entry)
    rel = job.file(".trt.pt2")
    options = {k: v for k, v in job.plan.factors.options.items() if k != "stage_backends"}
    torch_tensorrt.compile_program(job.out / entry.program, BufferPlan.from_dict(entry.buffers), job.out / rel,
                                   options, _gpu(job))
    function = load_program(job.out / rel, BufferPlan.from_dict(entry.buffers))
    entry = dataclasses.replace(entry, engine=rel, device_vs_eager=compare(job, function, _gpu(job)))
    log.info("built %s -> %s; Torch-TensorRT vs eager (GPU) relative L2 %s", job.spec.name, rel,
             entry.device_vs_eager)
    return entry


# backend -> how it writes a built stage; backends absent here write nothing but the weights
EXPORTERS: dict[Backend, Callable[[ExportJob, StageEntry], StageEntry]] = {
    Backend.COMPILE: export_aot,
    Backend.ONNX: export_onnx,
    Backend.TENSORRT: export_tensorrt,
    Backend.TORCH_TENSORRT: export_torch_tensorrt,
}


def write_stages(model: GLPModel, plan: BuildPlan, out: Path, quantized: dict[str, StageQuantization],
                 step: Callable[[str], ContextManager] = lambda what: contextlib.nullcontext()
                 ) -> dict[str, dict[str, StageEntry]]:
    """{component: {stage: entry}}; writes each built stage's files through its backend's exporter. `step(what)`
    wraps each export (the build's progress bar)."""
    specs = export_specs(model.config, denoise_ops_of(plan.factors.options))
    components: dict[str, dict[str, StageEntry]] = {name: {} for name in model.components()}
    for name, stage in plan.stages.items():
        # what the stage really runs in: fp8 only where it was calibrated and got Q/DQ nodes
        precision = ("fp8" if name in quantized else "int8" if plan.policy.of(stage.component) == Precision.INT8
                     else str(plan.policy.dtype(stage.component)).removeprefix("torch."))
        entry = StageEntry(backend=stage.backend.value, precision=precision,
                           profile=stage.to_dict()["profile"], reason=stage.reason)
        exporter = EXPORTERS.get(stage.backend)
        if exporter is not None:
            with step(f"export {name}"):
                entry = exporter(ExportJob(model, specs[name], stage, plan, out, quantized.get(name)), entry)
        components[stage.component][name] = entry
    return components


__all__ = ["EXPORTERS", "ExportJob", "TIMING_CACHE_DIR", "buffer_plan", "compare", "export_aot", "write_graph",
           "write_program", "write_stages", "write_weights"]
