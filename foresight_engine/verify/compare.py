"""`verify`: compare a predicted clip with the actual one (PSNR, SSIM, LPIPS, temporal consistency)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from ..errors import InvalidInputError, WeightsMissingError
from ..plotting import require_matplotlib
from . import metrics
from .clips import Clip, align, load_clip
from .lpips_backbone import MIN_SIDE, check_net, load_lpips, locate_lpips_weights
from .perceptual import lpips_per_frame, pooled_features
from .plot import save_plot
from .result import TemporalConsistency, Verification

logger = logging.getLogger(__name__)


def verify(predicted: Clip, actual: Clip, *, lpips_net: str = "alex",
           lpips_weights: str | os.PathLike[str] | None = None,
           plot: str | os.PathLike[str] | None = None) -> Verification:
    """Compare `predicted` with `actual` (uint8 arrays [F, H, W, 3] or video paths).

    The clips are aligned first by the rule in `foresight_engine.verify.clips` (reported in `alignment`).
    LPIPS uses the safetensors weights in `lpips_weights` (else $FORESIGHT_LPIPS_WEIGHTS, see
    `lpips_backbone`); without them `lpips` is None, `lpips_missing` says which file was looked for, and
    temporal consistency falls back to downsampled pixels. A malformed weights file raises `WeightsError`.
    `plot`: optional .png path for per-frame curves.
    """
    check_net(lpips_net)
    if plot is not None and Path(plot).suffix.lower() != ".png":
        raise InvalidInputError(f"plot must be a .png path, got {str(plot)!r}")
    if plot is not None:
        require_matplotlib()  # before the metrics, not after
    pred, act, alignment = align(load_clip(predicted, "predicted"), load_clip(actual, "actual"))
    n_frames, height, width, _ = pred.shape  # [F, H, W, 3], equal for both after alignment
    if min(height, width) < metrics.SSIM_WINDOW:
        raise InvalidInputError(f"frames of {height}x{width} are smaller than the {metrics.SSIM_WINDOW}x"
                                f"{metrics.SSIM_WINDOW} SSIM window")

    try:
        weights, lpips_missing = locate_lpips_weights(lpips_net, lpips_weights), None
    except WeightsMissingError as err:
        weights, lpips_missing = None, str(err)
        logger.warning("LPIPS skipped: %s", lpips_missing)
    if weights is not None and min(height, width) < MIN_SIDE[lpips_net]:
        raise InvalidInputError(f"frames of {height}x{width} are too small for LPIPS-{lpips_net} "
                                f"(min side {MIN_SIDE[lpips_net]}); use larger frames or another --lpips-net")

    psnr = metrics.psnr_per_frame(pred, act)
    ssim = metrics.ssim_per_frame(pred, act)
    if weights is None:
        lpips_values = None
        feats_pred, feats_act = metrics.pixel_features(pred), metrics.pixel_features(act)
        feature_kind = f"pixels downsampled to {metrics.PIXEL_FEATURE_SIDE}x{metrics.PIXEL_FEATURE_SIDE}"
    else:
        model = load_lpips(weights)
        lpips_values = tuple(lpips_per_frame(model, pred, act))
        feats_pred, feats_act = pooled_features(model, pred), pooled_features(model, act)
        feature_kind = f"LPIPS-{lpips_net} trunk features, spatially pooled"

    result = Verification(
        psnr=float(np.mean(psnr)),
        ssim=float(np.mean(ssim)),
        lpips=None if lpips_values is None else float(np.mean(lpips_values)),
        temporal_consistency=TemporalConsistency(
            predicted=metrics.consecutive_cosine(feats_pred),
            actual=metrics.consecutive_cosine(feats_act),
            features=feature_kind,
        ),
        psnr_per_frame=tuple(psnr),
        ssim_per_frame=tuple(ssim),
        lpips_per_frame=lpips_values,
        alignment=alignment,
        lpips_net=lpips_net,
        lpips_missing=lpips_missing,
        frames=n_frames,
        height=height,
        width=width,
    )
    logger.info("verify: psnr=%.3f ssim=%.4f lpips=%s", result.psnr, result.ssim, result.lpips)
    if plot is not None:
        save_plot(result, plot)
    return result
