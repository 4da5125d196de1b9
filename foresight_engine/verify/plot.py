"""Per-frame PSNR / SSIM / LPIPS curves (a figure, or a PNG file); needs the `[plot]` extra (matplotlib)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..plotting import figure, save_png
from .result import Verification

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def save_plot(result: Verification, path: str | os.PathLike[str]) -> Path:
    """Write `curves_figure(result)` to the .png `path` (atomically); returns `path`."""
    return save_png(curves_figure(result), path)


def curves_figure(result: Verification) -> Figure:
    """Three stacked curves over frame index: PSNR, SSIM, LPIPS (or why LPIPS is missing)."""
    fig = figure(figsize=(8, 7), constrained_layout=True)
    ax_psnr, ax_ssim, ax_lpips = fig.subplots(3, 1, sharex=True)
    x = range(result.frames)

    # inf (identical frames) cannot be drawn: plot the finite values and say which frames were identical.
    ax_psnr.plot(x, [v if math.isfinite(v) else math.nan for v in result.psnr_per_frame], marker=".")
    identical = [i for i, v in enumerate(result.psnr_per_frame) if math.isinf(v)]
    ax_psnr.set_title("PSNR (dB)" + (f", identical frames (inf): {identical}" if identical else ""))
    ax_ssim.plot(x, result.ssim_per_frame, marker=".", color="tab:green")
    ax_ssim.set_title("SSIM")
    if result.lpips_per_frame is None:
        ax_lpips.text(0.5, 0.5, "LPIPS not computed: no weights", ha="center", va="center",
                      transform=ax_lpips.transAxes)
    else:
        ax_lpips.plot(x, result.lpips_per_frame, marker=".", color="tab:red")
    ax_lpips.set_title(f"LPIPS ({result.lpips_net}, lower is closer)")
    ax_lpips.set_xlabel("frame")
    fig.suptitle(f"predicted vs actual; alignment: {result.alignment}", fontsize=8, wrap=True)
    return fig
