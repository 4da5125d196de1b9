"""What the demo does, without any UI toolkit: follow one request's `Engine.stream` into views the page shows
(the answer so far and a bar over the denoising steps, then the clip, its frames, the stage timeline and
timings), and compare a prediction with a video of what really happened. Only the engine's public API is used."""
from __future__ import annotations

import contextlib
import html
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from ..engine import DenoiseStep, Done, Engine, FramesReady, Prediction, TextToken
from ..video_io import write_mp4

KEEP_VIDEOS = 32  # mp4s kept in the work directory (older ones are deleted)
FRAME_SIDE = 256  # frames are shown at least this large (nearest-neighbour: tiny presets make 64x64 clips)


@dataclass(frozen=True)
class View:
    """One update of the page: the answer so far, a status line (HTML with a progress bar), and at the end the
    prediction and its mp4."""

    answer: str
    status: str
    prediction: Prediction | None = None
    video: Path | None = None


def status_html(text: str, step: int = 0, total: int = 0) -> str:
    bar = f'<progress value="{step}" max="{total}"></progress> ' if total else ""
    return f'<div class="fe-status">{bar}{html.escape(text)}</div>'


class DemoRunner:
    def __init__(self, engine: Engine, workdir: Path):
        self.engine = engine
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._names = itertools.count()

    def run(self, images: Sequence[Any], prompt: str, **settings) -> Iterator[View]:
        """Views while the request runs; bad input raises the engine's typed error before any model runs.
        Closing the iterator early cancels the request (the engine's stream does)."""
        events = self.engine.stream(list(images), prompt, **settings)
        with contextlib.closing(events):  # closed early (a Stop click): the stream cancels the request
            yield from self._views(events, images[-1])

    def _views(self, events, last_image: Any) -> Iterator[View]:
        answer, step, total, tokens = "", 0, 0, 0
        for event in events:
            if isinstance(event, TextToken):
                answer, tokens = answer + event.text, tokens + 1
            elif isinstance(event, DenoiseStep):
                step, total = event.step, event.total
            elif isinstance(event, FramesReady):
                yield View(answer, status_html(f"video decoded; {tokens} tokens so far", total, total))
                continue
            elif isinstance(event, Done):
                pred = event.prediction
                video = self._save(pred)
                yield View(pred.text, status_html(self._summary(pred, last_image), total, total), pred, video)
                return
            yield View(answer, status_html(f"denoising step {step}/{total or '?'} · {tokens} tokens", step, total))

    def _save(self, pred: Prediction) -> Path:
        path = write_mp4(pred.frames, self.workdir / f"prediction-{next(self._names)}.mp4",
                         fps=pred.settings["frame_rate"])
        for old in sorted(self.workdir.glob("prediction-*.mp4"), key=lambda p: p.stat().st_mtime)[:-KEEP_VIDEOS]:
            old.unlink(missing_ok=True)
        return path

    def _summary(self, pred: Prediction, last_image: Any) -> str:
        f, h, w, _ = pred.frames.shape
        text = f"done in {pred.timings.total:.2f} s · {len(pred.token_ids)} tokens · {f} frames at {h}x{w}"
        size = _size(last_image)
        if size is not None and size != (h, w):
            stretched = " (stretched: other aspect ratio)" if abs(size[0] / size[1] - h / w) > 0.01 else ""
            text += f" · the last image ({size[0]}x{size[1]}) was resized to {h}x{w}{stretched}"
        return text


def _size(image: Any) -> tuple[int, int] | None:
    """(height, width) of an image given as a path, PIL image or array; None if it cannot be read."""
    try:
        if isinstance(image, np.ndarray):
            return image.shape[0], image.shape[1]
        img = image if isinstance(image, Image.Image) else Image.open(image)
        return img.height, img.width
    except (OSError, ValueError):
        return None


def frame_view(frames: np.ndarray | None, index: int) -> np.ndarray | None:
    """Frame `index` of uint8 [F, H, W, 3], enlarged (nearest) so that its shorter side is >= FRAME_SIDE."""
    if frames is None:
        return None
    frame = frames[int(np.clip(index, 0, len(frames) - 1))]
    scale = max(1, math.ceil(FRAME_SIDE / min(frame.shape[:2])))
    return frame.repeat(scale, axis=0).repeat(scale, axis=1)


def timings_table(pred: Prediction) -> str:
    """Markdown: each stage's start, end and duration (seconds since the request started) and the overlap."""
    rows = ["| stage | start s | end s | seconds |", "|---|---:|---:|---:|"]
    for stage, (start, end) in sorted(pred.timings.spans.items(), key=lambda kv: kv[1][0]):
        rows.append(f"| {stage} | {start:.3f} | {end:.3f} | {end - start:.3f} |")
    rows.append(f"| **total** | | | **{pred.timings.total:.3f}** |")
    return "\n".join(rows) + (f"\n\ntext decoded while the video was made: "
                              f"{pred.timings.overlap_fraction():.0%} of the shorter branch")


def timeline(pred: Prediction):
    """The request's stage timeline (a matplotlib figure; one lane per stage)."""
    from ..bench.timeline import timeline_figure
    s = pred.settings
    return timeline_figure({"this request": pred.timings},
                           f"{s['num_frames']} frames at {s['height']}x{s['width']}, {s['num_inference_steps']} "
                           f"steps, {len(pred.token_ids)} tokens")


def verification(frames: np.ndarray, actual: str | Path) -> tuple[str, Any]:
    """Scores (markdown) and per-frame curves (a figure) of the predicted `frames` against the `actual` video.
    LPIPS uses the weights in $FORESIGHT_LPIPS_WEIGHTS when set (else it is reported as not computed)."""
    from ..verify import verify
    from ..verify.plot import curves_figure
    result = verify(frames, actual)
    lines = ["| metric | value |", "|---|---:|"]
    for line in result.summary().splitlines():
        name, _, value = line.partition(":")
        lines.append(f"| {name.strip()} | {value.strip()} |")
    return "\n".join(lines), curves_figure(result)
