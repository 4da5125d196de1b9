"""Compile runner: a built stage is an AOTInductor package (`<component>/<stage>.pt2`: torch.export of the stage
wrapper, compiled ahead of time with the weights frozen in), loaded with `aoti_load_package`: no tracing, no
compilation at load. The `denoise` stage is the static plan's whole step (`StaticStep`)."""
from __future__ import annotations

import torch

from ...artifact import StageEntry
from ...errors import ArtifactError
from ...models.export_spec import denoise_ops_of, export_specs
from . import RunnerContext, StageFn


def load(stage: str, entry: StageEntry, context: RunnerContext) -> StageFn:
    ops = denoise_ops_of(context.options) if stage == "denoise" else None
    spec = export_specs(context.model.config, ops)[stage]
    if entry.file is None:
        raise ArtifactError(f"rebuild needed: compile stage {stage} has no package (an artifact from before "
                            "ahead-of-time packages)")
    index = -1 if context.device.index is None else context.device.index  # -1: the current CUDA device / the CPU
    package = torch._inductor.aoti_load_package(str(context.directory / entry.file), device_index=index)
    cache_dtype = context.policy.dtype(spec.component)

    def run(*inputs: torch.Tensor):
        # the dtypes the package was exported with: floating inputs in fp32, the KV cache and the plan's tables in
        # the component's own dtype (never copied to fp32)
        canonical = [(x.to(cache_dtype) if name in spec.cache_inputs else x.float() if x.is_floating_point() else x)
                     .contiguous() for name, x in zip(spec.input_names, inputs)]
        out = package(*canonical)
        return tuple(out) if isinstance(out, list) else out
    return run
