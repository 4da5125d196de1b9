"""FP8 calibration sets: each stage's inputs, from its seeded sample inputs (default) or captured while the fp32
reference engine runs user images and prompts (`--calib IMAGE:PROMPT`)."""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..engine import Engine
from ..errors import CalibrationError
from ..models.export_spec import BuildShape, ExportSpec
from ..models.glp import GLPModel
from ..models.stages import stack_cache

DEFAULT_BATCHES = 4  # sample-input seeds 0..3

Batch = tuple[torch.Tensor, ...]

# stage -> (component attribute, method, the stage's inputs from that method's arguments)
_TAPS: dict[str, tuple[str, str, Callable[[tuple], Batch]]] = {
    "vision": ("vision_tower", "forward", lambda a: a[:2]),
    "prefill": ("backbone", "prefill", lambda a: a[:2]),
    "decode": ("backbone", "decode_step", lambda a: (a[0], a[1], *stack_cache(a[2]))),
    "adapter": ("adapter", "forward", lambda a: a[:1]),
    "denoise": ("video_decoder", "forward", lambda a: a[:4]),
    "vae_decode": ("vae", "decode", lambda a: a[:1]),
}


@dataclass(frozen=True)
class CalibrationSample:
    image: Path
    prompt: str

    @classmethod
    def parse(cls, text: str) -> "CalibrationSample":
        """`IMAGE:PROMPT` (the first colon splits)."""
        image, sep, prompt = text.partition(":")
        if not sep or not prompt.strip():
            raise CalibrationError(f"--calib {text!r} must be IMAGE:PROMPT")
        return cls(Path(image), prompt)


@contextmanager
def _tap(model: GLPModel, stage: str, into: list[Batch]) -> Iterator[None]:
    """Record `stage`'s inputs each time the eager component method runs (instance-level patch, undone on exit)."""
    attr, method, pick = _TAPS[stage]
    component = getattr(model, attr)
    original = getattr(component, method)

    def recorded(*args, **kwargs):
        into.append(tuple(x.detach().clone() for x in pick(args)))
        return original(*args, **kwargs)

    setattr(component, method, recorded)
    try:
        yield
    finally:
        delattr(component, method)


def calibration_batches(reference: GLPModel, stages: list[ExportSpec], shape: BuildShape,
                        samples: list[CalibrationSample] | None) -> dict[str, list[Batch]]:
    """{stage: [input tuples]} for every stage in `stages`."""
    if not samples:
        return {s.name: [s.sample_inputs(shape, seed=k) for k in range(DEFAULT_BATCHES)] for s in stages}
    captured: dict[str, list[Batch]] = {s.name: [] for s in stages}
    engine = Engine(reference)
    with ExitStack() as stack:
        for name, batches in captured.items():
            stack.enter_context(_tap(reference, name, batches))
        for sample in samples:
            engine.predict(str(sample.image), sample.prompt, height=shape.height, width=shape.width,
                           num_frames=shape.num_frames, frame_rate=shape.frame_rate,
                           guidance_scale=2.0 if shape.guidance else 1.0)
    return captured


__all__ = ["CalibrationSample", "calibration_batches"]
