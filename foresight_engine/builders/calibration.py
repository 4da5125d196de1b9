"""FP8/int8 calibration sets: each stage's inputs, from its seeded sample inputs (FP8's default) or recorded at the
stage boundary while the fp32 reference engine runs images and prompts (`--calib IMAGE:PROMPT`; int8's default is
`default_samples()`: int8's uniform grid needs the activation ranges of real requests, whose denoising steps run
at every timestep of the schedule, more than FP8's floating grid does).

Recording wraps the very stage functions the engine calls (the engine runs the stage wrappers builders export),
so every call is seen whatever path the runtime takes: the denoising step at every step of the trajectory (the
engine runs the build geometry's one-step stage, not the static plan), every decode step (up to
`DECODE_STEPS_PER_SAMPLE` per sample, keeping only the cache slots filled so far), the prefill, the adapter and the
VAE decode.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..backends import Backend
from ..engine import Engine
from ..engine.runners import BuiltStages
from ..errors import CalibrationError
from ..models.export_spec import BuildShape, ExportSpec
from ..models.glp import GLPModel

DEFAULT_BATCHES = 4  # sample-input seeds 0..3
DECODE_STEPS_PER_SAMPLE = 16  # each decode step's batch holds the cache so far: bound the set's size

Batch = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class CalibrationSample:
    image: "Path | np.ndarray"  # a file, or uint8 [H, W, 3]
    prompt: str

    @classmethod
    def parse(cls, text: str) -> "CalibrationSample":
        """`IMAGE:PROMPT` (the first colon splits)."""
        image, sep, prompt = text.partition(":")
        if not sep or not prompt.strip():
            raise CalibrationError(f"--calib {text!r} must be IMAGE:PROMPT")
        return cls(Path(image), prompt)


def default_samples(count: int = 2) -> list[CalibrationSample]:
    """Seeded synthetic requests (a gradient plus noise, so the VAE and the vision tower see structure), not the
    accuracy gate's probe set."""
    prompts = ("What happens next? Describe the motion.", "Where will the objects be in a second?")
    samples = []
    for i in range(count):
        rng = np.random.default_rng(2000 + i)
        ramp = np.linspace(0, 255, 96, dtype=np.float32)[:, None, None]
        image = np.clip(ramp * 0.7 + rng.integers(0, 80, (96, 96, 3)), 0, 255).astype(np.uint8)
        samples.append(CalibrationSample(image, prompts[i % len(prompts)]))
    return samples


def _snapshot(stage: str, inputs: Batch) -> Batch:
    """A stage call's inputs, copied; a decode step keeps only the filled cache slots (the rest is masked)."""
    if stage == "decode":
        token_ids, position, keys, values, slot = inputs
        n = int(slot)
        inputs = (token_ids, position, keys[:, :, :, :n], values[:, :, :, :n], slot)
    return tuple(x.detach().clone() for x in inputs)


def _recording(stage: str, function: Callable, into: list[Batch], seen: dict[str, int]) -> Callable:
    """`function`, recording its inputs into `into` (`seen` counts this sample's calls; reset per sample)."""
    def recorded(*inputs: torch.Tensor):
        seen[stage] = seen.get(stage, 0) + 1
        if stage != "decode" or seen[stage] <= DECODE_STEPS_PER_SAMPLE:
            into.append(_snapshot(stage, inputs))
        return function(*inputs)
    return recorded


def calibration_batches(reference: GLPModel, stages: list[ExportSpec], shape: BuildShape,
                        samples: list[CalibrationSample] | None) -> dict[str, list[Batch]]:
    """{stage: [input tuples]} for every stage in `stages`."""
    if not samples:
        return {s.name: [s.sample_inputs(shape, seed=k) for k in range(DEFAULT_BATCHES)] for s in stages}
    captured: dict[str, list[Batch]] = {s.name: [] for s in stages}
    seen: dict[str, int] = {}
    functions = {s.name: _recording(s.name, s.wrap(reference, shape).eval(), captured[s.name], seen)
                 for s in stages}
    engine = Engine(reference, built=BuiltStages(functions, shape, {name: Backend.EAGER for name in functions}))
    for sample in samples:
        seen.clear()
        image = sample.image if isinstance(sample.image, np.ndarray) else str(sample.image)
        engine.predict(image, sample.prompt, height=shape.height, width=shape.width,
                       num_frames=shape.num_frames, frame_rate=shape.frame_rate,
                       guidance_scale=2.0 if shape.guidance else 1.0)
    empty = sorted(name for name, batches in captured.items() if not batches)
    if empty:
        raise CalibrationError(f"calibration samples {[s.prompt for s in samples]} reached no call of stage(s) "
                               f"{empty} (e.g. an answer of one token never runs a decode step)")
    return captured


__all__ = ["CalibrationSample", "DECODE_STEPS_PER_SAMPLE", "calibration_batches", "default_samples"]
