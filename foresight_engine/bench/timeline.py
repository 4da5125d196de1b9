"""Timeline of one step: one lane per stage (and thread, when the runtime reports one), as a PNG.

Reads `timings.spans` (start/end per stage, from the pipelined runtime) when present; otherwise lays the
per-stage durations of `timings.stages` out one after the other, which is what a sequential step does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from ..plotting import figure, save_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Span:
    lane: str
    start: float  # seconds from the step's first span
    end: float


def _span_fields(item: Any) -> tuple[str, float, float, str | None]:
    """(stage, start, end, thread) from an object, a mapping or a tuple `(stage, start, end[, thread])`."""
    if isinstance(item, Mapping):
        get = item.get
    elif isinstance(item, (tuple, list)):
        return str(item[0]), float(item[1]), float(item[2]), (str(item[3]) if len(item) > 3 else None)
    else:
        get = lambda k, d=None: getattr(item, k, d)  # noqa: E731
    stage = get("stage") or get("name")
    thread = get("thread") or get("lane")
    return str(stage), float(get("start")), float(get("end")), (str(thread) if thread is not None else None)


def spans_of(timings: Any) -> list[Span]:
    raw = getattr(timings, "spans", None)
    if raw:
        items = [(k, *v) for k, v in raw.items()] if isinstance(raw, Mapping) else list(raw)
        fields = [_span_fields(i) for i in items]
        t0 = min(f[1] for f in fields)
        return [Span(f"{thread}: {stage}" if thread else stage, start - t0, end - t0)
                for stage, start, end, thread in fields]
    spans, t = [], 0.0
    for stage, seconds in getattr(timings, "stages", {}).items():
        spans.append(Span(stage, t, t + seconds))
        t += seconds
    return spans


def plot_timelines(timelines: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """`timeline_figure(timelines, title)` written atomically to `path` (PNG)."""
    return save_png(timeline_figure(timelines, title), path)


def timeline_figure(timelines: dict[str, Any], title: str = "") -> Figure:
    """One panel per configuration (or request), one lane per stage, seconds on the x axis."""
    panels = {name: spans_of(t) for name, t in timelines.items()}
    panels = {k: v for k, v in panels.items() if v}
    heights = [0.8 + 0.4 * len({s.lane for s in spans}) for spans in panels.values()] or [1.0]
    fig = figure(figsize=(10, 0.6 + sum(heights)))
    axes = fig.subplots(len(heights), 1, squeeze=False, sharex=True, gridspec_kw={"height_ratios": heights})
    # one colour per stage in every panel (a lane "thread: stage" takes its stage's)
    from matplotlib import colormaps  # behind figure()'s own check for the [plot] extra
    stages = list(dict.fromkeys(s.lane.rpartition(": ")[2] for spans in panels.values() for s in spans))
    palette = colormaps["tab20"].colors
    colour = {stage: palette[i % len(palette)] for i, stage in enumerate(stages)}
    for ax, (name, spans) in zip(axes[:, 0], panels.items()):
        lanes = list(dict.fromkeys(s.lane for s in spans))
        for s in spans:
            ax.barh(lanes.index(s.lane), s.end - s.start, left=s.start, height=0.6,
                    color=colour[s.lane.rpartition(": ")[2]])
        ax.set_yticks(range(len(lanes)), lanes)
        ax.invert_yaxis()
        ax.set_title(name, fontsize=9, loc="left")
        ax.set_xlabel("seconds")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
