"""LPIPS distances and pooled trunk features per frame, computed with a loaded `lpips.LPIPS` model."""
from __future__ import annotations

import lpips
import numpy as np
import torch
import torch.nn.functional as F

# Frames per forward pass: bounds activation memory for long or large clips.
_BATCH = 8


def _to_lpips_input(frames: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float32 [B, 3, H, W] in [-1, 1], the range LPIPS expects."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@torch.inference_mode()
def lpips_per_frame(model: lpips.LPIPS, predicted: np.ndarray, actual: np.ndarray) -> list[float]:
    """LPIPS distance of each frame pair; `predicted` and `actual` are aligned uint8 [F, H, W, 3]."""
    out: list[float] = []
    for start in range(0, len(predicted), _BATCH):
        a = _to_lpips_input(predicted[start:start + _BATCH])
        b = _to_lpips_input(actual[start:start + _BATCH])
        out.extend(model(a, b).flatten().tolist())  # model(...): [B, 1, 1, 1]
    return out


@torch.inference_mode()
def pooled_features(model: lpips.LPIPS, frames: np.ndarray) -> torch.Tensor:
    """Per frame, each trunk layer's activations averaged over space and L2-normalised, concatenated.

    uint8 [F, H, W, 3] -> float32 [F, sum of layer channels] (1152 for alex). Normalising per layer makes the
    cosine similarity of two such vectors the mean of the per-layer cosine similarities.
    """
    chunks = []
    for start in range(0, len(frames), _BATCH):
        layers = model.net(model.scaling_layer(_to_lpips_input(frames[start:start + _BATCH])))  # [B, C_l, h_l, w_l]
        chunks.append(torch.cat([F.normalize(h.mean(dim=(2, 3)), dim=1) for h in layers], dim=1))
    return torch.cat(chunks)
