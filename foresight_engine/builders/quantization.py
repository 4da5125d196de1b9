"""What an FP8 stage carries through a build, and the one place that calibrates it.

`calibrate_stage` turns a stage's calibration batches into a `StageQuantization`: the Linear scales (ModelOpt's
calibrator where it is installed, `fp8.calibrate` otherwise: both are per-tensor max and agree layer by layer), and
with the FP8 attention / FP8 KV-cache options the attention scales (`fp8_attention.record_attention`). Its two views
of a stage module are what every exporter uses:
- `exportable(module)`: the module to export (FP8 attention as `foresight::fp8_qdq` ops, whose ONNX translation is
  Q/DQ); the Linears' Q/DQ are inserted into the graph afterwards (`fp8.insert_qdq`, with `LINEAR_PREFIX`);
- `simulated(module)`: a copy computing what the built FP8 stage must compute (the CPU simulation), the reference a
  built stage is checked against.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError
from . import fp8, modelopt_fp8
from .fp8_attention import AttentionScales, Fp8AttentionStage, record_attention

log = logging.getLogger(__name__)

CALIBRATORS = ("auto", "modelopt", "max")  # auto: ModelOpt where installed, else the project's max calibrator


def resolve_calibrator(name: str) -> str:
    """`modelopt` or `max` for a requested calibrator; `modelopt` without ModelOpt installed is refused."""
    if name not in CALIBRATORS:
        raise ConfigError(f"unknown FP8 calibrator {name!r}; choose one of {list(CALIBRATORS)}")
    if name == "auto":
        return "modelopt" if modelopt_fp8.available() else "max"
    if name == "modelopt" and not modelopt_fp8.available():
        raise ConfigError("--fp8-calibrator modelopt needs NVIDIA ModelOpt: pip install 'foresight-engine[tensorrt]' "
                          "(or nvidia-modelopt)")
    return name


@dataclass(frozen=True)
class StageQuantization:
    scales: fp8.Fp8Scales  # the Linears' (input amax, weight amax)
    attention: AttentionScales | None = None  # per attention call (q, k, v amax), with either option below
    kv_cache: bool = False
    fp8_attention: bool = False

    LINEAR_PREFIX = "stage."  # the calibrated stage's path inside `Fp8AttentionStage`

    def exportable(self, module: nn.Module) -> nn.Module:
        if self.attention is None:
            return module
        return Fp8AttentionStage(module, self.attention, kv_cache=self.kv_cache, attention=self.fp8_attention)

    @property
    def prefix(self) -> str:
        return self.LINEAR_PREFIX if self.attention is not None else ""

    def simulated(self, module: nn.Module) -> nn.Module:
        return self.exportable(fp8.apply_fp8_simulation(copy.deepcopy(module), self.scales))

    def save(self, directory: Path, component: str, stage: str) -> dict[str, Any]:
        """Write the scale files; returns the stage entry's fields naming them."""
        from ..artifact import stage_file
        fields: dict[str, Any] = {"fp8_scales": stage_file(component, stage, ".fp8.safetensors"),
                                  "fp8_layers": len(self.scales)}
        self.scales.save(directory / fields["fp8_scales"])
        if self.attention is not None:
            fields["fp8_attention"] = stage_file(component, stage, ".fp8-attention.json")
            self.attention.save(directory / fields["fp8_attention"])
        return fields


def calibrate_stage(module: nn.Module, batches: list, keep_high: tuple[str, ...], *, calibrator: str,
                    kv_cache: bool = False, attention: bool = False) -> StageQuantization:
    """Calibrate one stage module (`eval()` mode, its build precision) on its calibration `batches`."""
    if resolve_calibrator(calibrator) == "modelopt":
        scales = modelopt_fp8.calibrate(module, batches, keep_high)
    else:
        scales = fp8.calibrate(module, batches, skip=lambda name, layer: any(p in name for p in keep_high))
    attention_scales = record_attention(module, batches) if (kv_cache or attention) else None
    log.info("FP8 calibration of %s: %d Linears%s", type(module).__name__, len(scales),
             f", {len(attention_scales)} attention calls" if attention_scales else "")
    return StageQuantization(scales, attention_scales, kv_cache, attention)


__all__ = ["CALIBRATORS", "StageQuantization", "calibrate_stage", "resolve_calibrator"]
