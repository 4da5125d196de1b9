"""FP8/int8 calibration sets: each stage's inputs, recorded at the stage boundary while the fp32 reference engine runs
real requests: by default the accuracy probes' requests (their images at the built image size and prompts, with
another noise seed), or the user's images and prompts (`--calib IMAGE:PROMPT`). Never random embeddings at one
timestep: the denoising step is recorded at EVERY step of the trajectory (its inputs drift from noise to clean).

Recording wraps the very stage functions the engine calls (the engine runs the stage wrappers builders export),
so every call is seen whatever path the runtime takes: the denoising step at every step of the trajectory (the
engine runs the build geometry's one-step stage, not the static plan), every decode step (up to
`DECODE_STEPS_PER_SAMPLE` per sample, keeping only the cache slots filled so far), the prefill, the adapter and the
VAE decode.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch

from ..backends import Backend
from ..engine import Engine
from ..engine.runners import BuiltStages
from ..errors import CalibrationError
from ..models.export_spec import BuildShape, ExportSpec
from ..models.glp import GLPModel
from .probes import CALIBRATION_SEED, PROBE_PROMPTS, probe_images, probe_settings

DECODE_STEPS_PER_SAMPLE = 16  # each decode step's batch holds the cache so far: bound the set's size

Batch = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class CalibrationSample:
    image: Path | np.ndarray  # a file, or uint8 [H, W, 3]
    prompt: str

    @classmethod
    def parse(cls, text: str) -> "CalibrationSample":
        """`IMAGE:PROMPT` (the first colon splits)."""
        image, sep, prompt = text.partition(":")
        if not sep or not prompt.strip():
            raise CalibrationError(f"--calib {text!r} must be IMAGE:PROMPT")
        return cls(Path(image), prompt)


def _snapshot(stage: str, inputs: Batch, trim: bool) -> Batch:
    """A stage call's inputs, copied; with `trim`, a decode step keeps only the filled cache slots (the rest is
    masked: calibration need not see it)."""
    if trim and stage == "decode":
        token_ids, position, keys, values, slot = inputs
        n = int(slot)
        inputs = (token_ids, position, keys[:, :, :, :n], values[:, :, :, :n], slot)
    return tuple(x.detach().clone() for x in inputs)


class StageRecorder:
    """The reference model in an engine whose stage functions record their inputs: `predict` like an engine;
    `inputs[stage]` holds up to `limit[stage]` calls per request (all when absent) of every stage in `specs`."""

    def __init__(self, reference: GLPModel, specs: list[ExportSpec], shape: BuildShape, *, trim: bool = False,
                 limit: Mapping[str, int] | None = None):
        self.inputs: dict[str, list[Batch]] = {s.name: [] for s in specs}
        self._seen: dict[str, int] = {}
        self._trim, self._limit = trim, dict(limit or {})
        functions = {s.name: self._recording(s.name, s.wrap(reference, shape).eval()) for s in specs}
        self.engine = Engine(reference, built=BuiltStages(functions, shape, {name: Backend.EAGER for name in functions}))

    def _recording(self, stage: str, function: Callable) -> Callable:
        def recorded(*inputs: torch.Tensor):
            self._seen[stage] = self._seen.get(stage, 0) + 1
            if self._seen[stage] <= self._limit.get(stage, self._seen[stage]):
                self.inputs[stage].append(_snapshot(stage, inputs, self._trim))
            return function(*inputs)
        return recorded

    def predict(self, image, prompt: str, **settings):
        self._seen.clear()  # the limits are per request
        return self.engine.predict(image, prompt, **settings)


def calibration_batches(reference: GLPModel, stages: list[ExportSpec], shape: BuildShape,
                        samples: list[CalibrationSample] | None) -> dict[str, list[Batch]]:
    """{stage: [input tuples]} for every stage in `stages`, recorded while the reference runs `samples` (default:
    the accuracy probes' requests, with the calibration seed)."""
    if not samples:
        samples = [CalibrationSample(image, prompt) for image, prompt in zip(probe_images(shape), PROBE_PROMPTS)]
    recorder = StageRecorder(reference, stages, shape, trim=True, limit={"decode": DECODE_STEPS_PER_SAMPLE})
    for sample in samples:
        image = sample.image if isinstance(sample.image, np.ndarray) else str(sample.image)
        recorder.predict(image, sample.prompt, **probe_settings(shape, seed=CALIBRATION_SEED))
    empty = sorted(name for name, batches in recorder.inputs.items() if not batches)
    if empty:
        raise CalibrationError(f"calibration samples {[s.prompt for s in samples]} reached no call of stage(s) "
                               f"{empty} (e.g. an answer of one token never runs a decode step)")
    return recorder.inputs


__all__ = ["CalibrationSample", "DECODE_STEPS_PER_SAMPLE", "StageRecorder", "calibration_batches"]
