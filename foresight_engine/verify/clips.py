"""Load the two clips to compare and align them in time and space by one explicit, reported rule.

Rule: if frame counts differ, the longer clip is resampled to the shorter's count by nearest-index sampling
(indices `np.linspace(0, F_long - 1, F_short).round()`); if frame sizes differ, both clips are resized to
(min H, min W) with bilinear interpolation (antialias). The returned description says what was done, or "none".
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InvalidInputError, VideoError
from ..video_io import check_frames, read_video

logger = logging.getLogger(__name__)

Clip = np.ndarray | str | os.PathLike[str]
_RESIZE_BATCH = 16  # frames per interpolate call: bounds float32 memory for long clips


def load_clip(clip: Clip, name: str) -> np.ndarray:
    """`clip` as uint8 [F, H, W, 3]: validated if an array, decoded if a path; errors name `name` or the path."""
    if isinstance(clip, (str, os.PathLike)):
        try:
            return read_video(clip)[0]
        except VideoError as exc:  # its message names the path; `argument` says which argument gave it
            raise VideoError(str(exc), argument=name) from None
    if not isinstance(clip, np.ndarray):
        raise InvalidInputError(f"{name} must be a uint8 array [F, H, W, 3] or a video path, got {type(clip).__name__}")
    return check_frames(clip, name)


def _resample(frames: np.ndarray, count: int) -> np.ndarray:
    """Nearest-index temporal resampling [F, H, W, 3] -> [count, H, W, 3]."""
    return frames[np.linspace(0, len(frames) - 1, count).round().astype(np.int64)]


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (antialias) resize [F, H, W, 3] -> [F, height, width, 3], rounded back to uint8."""
    out = []
    for start in range(0, len(frames), _RESIZE_BATCH):
        x = torch.from_numpy(frames[start:start + _RESIZE_BATCH]).permute(0, 3, 1, 2).float()  # [B, 3, H, W]
        y = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        out.append(y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def align(predicted: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Apply the module's rule -> (predicted, actual, description); the clips come back with equal shapes."""
    steps = []
    n_pred, n_act = len(predicted), len(actual)
    if n_pred != n_act:
        longer = "predicted" if n_pred > n_act else "actual"
        n_long, n_short = max(n_pred, n_act), min(n_pred, n_act)
        if longer == "predicted":
            predicted = _resample(predicted, n_short)
        else:
            actual = _resample(actual, n_short)
        steps.append(f"frames: {longer} resampled {n_long} -> {n_short} by nearest index "
                     f"(np.linspace(0, {n_long - 1}, {n_short}).round())")
    size = (min(predicted.shape[1], actual.shape[1]), min(predicted.shape[2], actual.shape[2]))
    resized = []
    if predicted.shape[1:3] != size:
        resized.append(f"predicted {predicted.shape[1]}x{predicted.shape[2]}")
        predicted = _resize(predicted, *size)
    if actual.shape[1:3] != size:
        resized.append(f"actual {actual.shape[1]}x{actual.shape[2]}")
        actual = _resize(actual, *size)
    if resized:
        steps.append(f"size: {', '.join(resized)} resized to {size[0]}x{size[1]} (min H, min W; bilinear, antialias)")
    description = "; ".join(steps) or "none"
    if steps:
        logger.warning("clips differ, aligned them: %s", description)
    return predicted, actual, description
