"""torch.compile runner: CPU artifacts hold the compile options, not compiled code; the stage wrapper is compiled
here, lazily at its first call (fixed shapes: one compile per stage)."""
from __future__ import annotations

import torch

from ...artifact import StageEntry
from ...models.export_spec import export_specs
from . import RunnerContext, StageFn


def load(stage: str, entry: StageEntry, context: RunnerContext) -> StageFn:
    spec = export_specs(context.model.config)[stage]
    options = {k: context.options[k] for k in ("fullgraph", "dynamic", "mode")}
    compiled = torch.compile(spec.wrap(context.model, context.shape).eval(), **options)
    cache_dtype = context.policy.dtype(spec.component)

    def run(*inputs: torch.Tensor):
        # one dtype per input whatever the caller's precision (a compiled stage guards on dtype and strides):
        # floating inputs in fp32, the KV cache in the component's own dtype (never copied to fp32)
        canonical = [(x.to(cache_dtype) if name in spec.cache_inputs else x.float() if x.is_floating_point() else x)
                     .contiguous() for name, x in zip(spec.input_names, inputs)]
        return compiled(*canonical)
    return run
