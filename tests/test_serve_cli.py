"""`foresight-engine serve` as a user runs it: a subprocess answering over loopback until it is stopped."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import httpx

from foresight_engine.cli import build_parser
from serve_helpers import free_port, png_bytes, wait_until


def test_serve_binds_to_loopback_by_default():
    args = build_parser().parse_args(["serve", "--preset", "tiny"])
    assert args.host == "127.0.0.1"


def test_serve_command_answers_until_interrupted(image):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "foresight_engine.cli", "serve", "--preset", "tiny",
                                "--port", str(port), "--max-queue-size", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, process.stdout.read()
        try:
            return httpx.get(f"{url}/readyz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, timeout_s=120, what="the server to be ready")
        settings = {"prompt": "next?", "height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2}
        response = httpx.post(f"{url}/v1/predict", files=[("image", ("a.png", png_bytes(image), "image/png"))],
                              data={"settings": json.dumps(settings)}, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["settings"]["num_frames"] == 5 and response.json()["video_mp4_base64"]
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
