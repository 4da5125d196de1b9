"""Full-reference frame metrics (PSNR, SSIM) and the temporal-consistency score, on aligned uint8 clips."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

DATA_RANGE = 255.0
SSIM_WINDOW = 11  # gaussian window side; frames must be at least this large
SSIM_SIGMA = 1.5
_C1 = (0.01 * DATA_RANGE) ** 2  # K1 = 0.01
_C2 = (0.03 * DATA_RANGE) ** 2  # K2 = 0.03
PIXEL_FEATURE_SIDE = 32  # frames are downsampled to 32x32 for pixel-based temporal consistency


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of 8-bit pixels (data range 255) from their mean squared error; `inf` when it is 0."""
    return math.inf if mse == 0.0 else 10.0 * math.log10(DATA_RANGE**2 / mse)


def psnr_per_frame(predicted: np.ndarray, actual: np.ndarray) -> list[float]:
    """PSNR in dB of each frame pair (data range 255); `inf` for a pixel-identical pair. Inputs uint8 [F, H, W, 3]."""
    out = []
    for pred, act in zip(predicted, actual, strict=True):  # frame by frame: a float64 copy of a whole clip can be GBs
        diff = pred.astype(np.float64) - act  # [H, W, 3]
        mse = float(np.mean(diff * diff))
        out.append(psnr_from_mse(mse))
    return out


def _gaussian() -> torch.Tensor:
    x = torch.arange(SSIM_WINDOW, dtype=torch.float64) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()  # [11]


def _band(n: int) -> torch.Tensor:
    """[n - 10, n] float64: row i holds the gaussian at columns i..i+10, so `band @ v` filters v ('valid' positions).

    A banded matmul runs on BLAS in float64 about as fast as a float32 depthwise conv, and float64 keeps
    var = E[x^2] - E[x]^2 free of cancellation error.
    """
    g, valid = _gaussian(), n - SSIM_WINDOW + 1
    return torch.stack([F.pad(g, (i, valid - 1 - i)) for i in range(valid)])


def ssim_per_frame(predicted: np.ndarray, actual: np.ndarray) -> list[float]:
    """Mean SSIM of each frame pair (Wang et al. 2004), computed per RGB channel and averaged.

    Gaussian window 11 (sigma 1.5), data range 255, K1=0.01, K2=0.03, population (co)variances, and only
    'valid' window positions (no padding): the same numbers as skimage's `structural_similarity` with
    `gaussian_weights=True, use_sample_covariance=False, data_range=255, channel_axis=-1`.
    Inputs uint8 [F, H, W, 3] with H, W >= 11.
    """
    band_h, band_w = _band(predicted.shape[1]), _band(predicted.shape[2]).T  # [H-10, H], [W, W-10]
    out: list[float] = []
    for pred, act in zip(predicted, actual, strict=True):  # one frame at a time: 15 float64 maps per frame
        x = torch.from_numpy(pred).permute(2, 0, 1).double()  # [3, H, W]
        y = torch.from_numpy(act).permute(2, 0, 1).double()
        stats = band_h @ torch.cat([x, y, x * x, y * y, x * y]) @ band_w  # [15, H-10, W-10]
        mu_x, mu_y, e_xx, e_yy, e_xy = stats.chunk(5)
        var_x, var_y, cov = e_xx - mu_x**2, e_yy - mu_y**2, e_xy - mu_x * mu_y
        ssim_map = ((2 * mu_x * mu_y + _C1) * (2 * cov + _C2)) / ((mu_x**2 + mu_y**2 + _C1) * (var_x + var_y + _C2))
        out.append(ssim_map.mean().item())
    return out


def pixel_features(frames: np.ndarray) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float32 [F, 3*32*32]: frames scaled to [-1, 1] and downsampled (bilinear, antialias)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    side = PIXEL_FEATURE_SIDE
    return F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False).flatten(1)


def consecutive_cosine(features: torch.Tensor) -> float | None:
    """Mean cosine similarity of consecutive rows of `features` [F, D]; None when F < 2 (no consecutive pair)."""
    if len(features) < 2:
        return None
    return F.cosine_similarity(features[:-1], features[1:], dim=1).mean().item()
