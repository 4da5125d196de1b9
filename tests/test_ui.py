"""The demo UI without a browser: the page builds, and its request runner streams views from `Engine.stream`
(the answer growing, the denoising steps, then the clip), refuses bad input before any model runs, cancels
when closed early, scrubs frames and verifies against an uploaded clip. `test_ui_browser.py` drives the page."""
from __future__ import annotations

import numpy as np
import pytest

from foresight_engine.errors import InvalidInputError
from foresight_engine.ui import runner
from foresight_engine.ui.scenes import SCENES, write_scenes
from foresight_engine.video_io import read_video, write_mp4
from serve_helpers import wait_until

SETTINGS = dict(num_frames=5, height=48, width=64, num_inference_steps=3, max_new_tokens=4, seed=1)  # image: 72x96


@pytest.fixture()
def work(engine, tmp_path):
    return runner.DemoRunner(engine, tmp_path / "videos")


def test_views_stream_then_end_with_the_prediction(work, engine, image):
    views = list(work.run([image], "What happens next?", **SETTINGS))
    *during, last = views
    assert all(v.prediction is None for v in during) and last.prediction is not None
    assert any("denoising step 1/3" in v.status and 'max="3"' in v.status for v in during)
    assert "done in" in last.status and "5 frames at 48x64" in last.status
    assert "the last image (72x96) was resized to 48x64" in last.status and "stretched" not in last.status
    want = engine.predict(image, "What happens next?", **SETTINGS)
    assert last.answer == want.text and last.prediction.token_ids == want.token_ids
    frames, _ = read_video(last.video)
    assert frames.shape == (5, 48, 64, 3)


def test_bad_input_raises_before_any_view(work):
    with pytest.raises(InvalidInputError, match="num_frames=6"):
        next(work.run([np.zeros((8, 8, 3), np.uint8)], "hi", num_frames=6))


def test_closing_the_stream_early_cancels_the_request(work, engine, image, monkeypatch):
    cancelled, cancel = [], engine.cancel
    monkeypatch.setattr(engine, "cancel", lambda request_id: cancelled.append(request_id) or cancel(request_id))
    views = work.run([image], "What happens next?", **SETTINGS)
    next(views)
    views.close()  # what Gradio does on Stop
    assert len(cancelled) == 1
    wait_until(lambda: engine.in_flight == 0, what="the request to end")


def test_frames_timeline_and_verification(work, image, tmp_path):
    pytest.importorskip("matplotlib")
    last = list(work.run([image], "What happens next?", **SETTINGS | dict(height=32, width=64)))[-1]
    assert "resized to 32x64 (stretched: other aspect ratio)" in last.status
    pred = last.prediction
    big = runner.frame_view(pred.frames, 99)  # clamped to the last frame, enlarged (nearest) for the page
    scale = big.shape[0] // 32
    assert big.shape[0] >= runner.FRAME_SIDE and np.array_equal(big[::scale, ::scale], pred.frames[-1])
    assert runner.frame_view(None, 0) is None
    assert "| denoise |" in runner.timings_table(pred) and runner.timeline(pred).axes
    actual = write_mp4(pred.frames, tmp_path / "actual.mp4", fps=24)
    scores, curves = runner.verification(pred.frames, actual)
    assert "| PSNR |" in scores and "| SSIM |" in scores and len(curves.axes) == 3


def test_scenes_and_the_page_build(engine, tmp_path):
    pytest.importorskip("gradio")
    from foresight_engine.ui import create_demo
    written = write_scenes(tmp_path / "scenes")
    assert [prompt for _, prompt in written] == [s.prompt for s in SCENES]
    assert all(path.is_file() for path, _ in written)
    demo = create_demo(engine, tmp_path / "ui")
    labels = {getattr(block, "label", None) for block in demo.blocks.values()}
    assert {"prompt", "predicted clip", "scrub frames", "actual video"} <= labels
