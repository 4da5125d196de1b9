"""The demo UI as a person uses it: `foresight-engine ui --preset tiny` in a subprocess, driven by a real headless
Chromium through Playwright. Opt-in, it needs a browser:

    apt-get install -y chromium            # Debian's build; Playwright's own browser download is not used
    FORESIGHT_UI_TESTS=1 .venv/bin/python -m pytest tests/test_ui_browser.py -q
    # FORESIGHT_UI_SCREENSHOT=docs/ui-demo.png also writes the screenshot the README shows
    # FORESIGHT_CHROMIUM=/path/to/chromium picks another Chromium binary
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from serve_helpers import free_port, wait_until

pytestmark = pytest.mark.skipif(os.environ.get("FORESIGHT_UI_TESTS") != "1",
                                reason="opt-in browser test: FORESIGHT_UI_TESTS=1 (needs chromium and playwright)")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("FORESIGHT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
# every text the status line shows, in order (the answer and the bar stream in many small updates)
RECORD_STATUS = """() => {
  window.feStatus = [];
  const node = document.querySelector('#fe-status');
  new MutationObserver(() => window.feStatus.push(node.innerText)).observe(node, {subtree: true, childList: true,
                                                                                  characterData: true});
}"""


@pytest.fixture(scope="module")
def ui_url():
    import httpx
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "foresight_engine.cli", "ui", "--preset", "tiny", "--port",
                                str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"

    def up() -> bool:
        assert process.poll() is None, process.stdout.read()
        try:
            return httpx.get(url).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, timeout_s=180, what="the UI to answer")
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium, or set FORESIGHT_CHROMIUM)")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True)
        yield browser
        browser.close()


def test_upload_predict_scrub_verify(ui_url, browser, tmp_path):
    from foresight_engine.video_io import write_mp4
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(ui_url)
    page.wait_for_selector("#fe-predict")
    page.locator("#fe-images input[type=file]").set_input_files(str(ROOT / "assets" / "example.png"))
    page.wait_for_selector("#fe-images img")
    page.evaluate(RECORD_STATUS)
    page.click("#fe-predict")

    # the clip arrives last (the Done event): a playable video, the answer and the status are there by then
    page.wait_for_function("() => { const v = document.querySelector('#fe-video video');"
                           " return v !== null && v.readyState >= 2 && v.duration > 0; }", timeout=120_000)
    assert page.locator("#fe-answer textarea").input_value().strip()
    statuses = page.evaluate("window.feStatus")
    assert any("denoising step" in s for s in statuses), statuses  # the bar followed the steps
    assert "9 frames at 64x64" in statuses[-1] and "stretched" in statuses[-1]
    assert page.locator("#fe-timeline img").count() == 1

    # scrubbing shows another frame
    first = page.locator("#fe-frame img").get_attribute("src")
    page.locator("#fe-scrub input[type=number]").fill("8")
    page.locator("#fe-scrub input[type=number]").press("Enter")
    page.wait_for_function("(src) => document.querySelector('#fe-frame img').src !== src", arg=first)

    # what really happened: a clip uploaded, scores and curves shown
    rng = np.random.default_rng(0)
    actual = write_mp4(rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8), tmp_path / "actual.mp4", fps=24)
    page.get_by_text("what really happened: verify the prediction").click()
    page.locator("#fe-actual input[type=file]").set_input_files(str(actual))
    page.wait_for_selector("#fe-actual video")
    page.click("#fe-verify")
    page.wait_for_selector("#fe-scores >> text=PSNR", timeout=60_000)

    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("FORESIGHT_UI_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["FORESIGHT_UI_SCREENSHOT"])
