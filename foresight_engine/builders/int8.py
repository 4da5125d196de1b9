"""int8 post-training quantization at build time, with the FP8 machinery: the stage inputs of the calibration set
(`calibration.py`, recorded at the stage boundary), the per-tensor input amax of every targeted Linear
(`fp8.calibrate`, forward pre-hooks), the policy's sensitive layers left out (`keeps_high`); then each calibrated
Linear of an int8 component becomes an `int8_linear.Int8Linear` (per-channel int8 weight, per-tensor uint8 input).

A component's Linears can serve several stages (the backbone's: prefill and decode): they are calibrated on every
stage of the component (whatever `--stages` builds) and keep the largest amax seen.
"""
from __future__ import annotations

import logging

from .. import int8_linear
from ..models.export_spec import BuildShape, ExportSpec
from ..models.glp import GLPModel
from ..precision import PrecisionPolicy
from . import fp8

log = logging.getLogger(__name__)


def calibrate(model: GLPModel, specs: list[ExportSpec], shape: BuildShape, batches: dict[str, list],
              policy: PrecisionPolicy) -> dict[str, dict[str, float]]:
    """{component: {layer name relative to the component: max |input|}} over every stage in `specs`."""
    amax: dict[str, dict[str, float]] = {}
    for spec in specs:
        wrapper = spec.wrap(model, shape).eval()
        component = model.components()[spec.component]
        relative = {id(m): name for name, m in component.named_modules()}
        scales = fp8.calibrate(wrapper, batches[spec.name], skip=lambda name, layer: policy.keeps_high(name))
        seen = amax.setdefault(spec.component, {})
        for name, (input_amax, _) in scales.amax.items():
            layer = relative[id(wrapper.get_submodule(name))]
            seen[layer] = max(seen.get(layer, 0.0), input_amax)
    return amax


def quantize(model: GLPModel, amax: dict[str, dict[str, float]]) -> dict[str, int]:
    """Swap the calibrated Linears of each component for `Int8Linear`s, in place; {component: layers}."""
    done = {name: len(int8_linear.quantize(model.components()[name], layers)) for name, layers in amax.items()}
    log.info("int8 layers per component: %s", done)
    return done


__all__ = ["calibrate", "quantize"]
