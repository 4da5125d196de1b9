"""Figures for plots (verification curves, stage timelines): matplotlib's Agg canvas, no display and no pyplot
state, so figures can be drawn from any thread (the UI's workers). matplotlib is the optional `[plot]` extra:
`figure()` raises `MissingExtraError` naming it when it is not installed."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import MissingExtraError
from .video_io import atomic_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTALL_HINT = "pip install 'foresight-engine[plot]'"


def require_matplotlib() -> None:
    """Raise `MissingExtraError` at once when matplotlib is missing (call it before long work that ends in a plot)."""
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError as exc:
        raise MissingExtraError(f"plots need matplotlib, which is not installed: {INSTALL_HINT}") from exc


def figure(**kwargs: Any) -> Figure:
    """A new figure on its own Agg canvas (`Figure(**kwargs)`)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Write `fig` to the .png `path` atomically; returns `path`."""
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path
