"""Per-frame PSNR / SSIM / LPIPS curves as a PNG (matplotlib's Agg canvas: no display, no pyplot state)."""
from __future__ import annotations

import math
import os
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..video_io import atomic_output
from .result import Verification


def save_plot(result: Verification, path: str | os.PathLike[str]) -> Path:
    """Write three stacked curves over frame index to the .png `path` (atomically); returns `path`."""
    path = Path(path)
    fig = Figure(figsize=(8, 7), constrained_layout=True)
    FigureCanvasAgg(fig)
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

    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path
