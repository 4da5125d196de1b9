"""The fixed probe requests a build runs: the accuracy gate's end-to-end checks (seed `PROBE_SEED`) and, by
default, FP8 calibration (the same requests with other noise, `CALIBRATION_SEED`)."""
from __future__ import annotations

import numpy as np

from ..models.export_spec import BuildShape

PROBE_PROMPTS = ("What happens next?", "Describe the motion in this scene.")
PROBE_SEED = 2
CALIBRATION_SEED = 0


def probe_images(shape: BuildShape | None = None, count: int = len(PROBE_PROMPTS)) -> list[np.ndarray]:
    """The fixed probe images at the build's input image size (default 72x96): seeded uint8 noise with a
    gradient (so the VAE sees structure)."""
    height, width = (72, 96) if shape is None else (shape.image_height or shape.height,
                                                   shape.image_width or shape.width)
    images = []
    for i in range(count):
        rng = np.random.default_rng(1000 + i)
        ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
        images.append(np.clip(ramp * 0.6 + rng.integers(0, 100, (height, width, 3)), 0, 255).astype(np.uint8))
    return images


def probe_settings(shape: BuildShape, steps: int | None = None, seed: int = PROBE_SEED) -> dict:
    """`predict()` settings of a probe request at the build shape (`steps` None: the preset's schedule)."""
    return dict(height=shape.height, width=shape.width, num_frames=shape.num_frames, num_inference_steps=steps,
                guidance_scale=2.0 if shape.guidance else 1.0, frame_rate=shape.frame_rate, seed=seed)


__all__ = ["CALIBRATION_SEED", "PROBE_PROMPTS", "PROBE_SEED", "probe_images", "probe_settings"]
