"""`foresight-engine serve` as a user runs it: a subprocess answering over loopback until it is stopped."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import httpx

from foresight_engine.cli import build_parser
from serve_helpers import free_port, png_bytes, wait_until


def test_serve_binds_to_loopback_by_default():
    args = build_parser().parse_args(["serve", "--preset", "tiny"])
    assert args.host == "127.0.0.1"


def test_serve_command_answers_then_stops_on_sigterm_cancelling_in_flight(image):
    """A real `foresight-engine serve`: it answers; on SIGTERM with the largest request in flight (minutes of work
    uncancelled), it cancels it (the client gets a 503), and exits well within its grace period."""
    port, grace_s = free_port(), 20
    process = subprocess.Popen([sys.executable, "-m", "foresight_engine.cli", "serve", "--preset", "tiny",
                                "--port", str(port), "--max-queue-size", "2", "--shutdown-grace-s", str(grace_s)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert process.poll() is None, process.stdout.read()
        try:
            return httpx.get(f"{url}/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def post(settings: dict) -> httpx.Response:
        return httpx.post(f"{url}/v1/predict", files=[("image", ("a.png", png_bytes(image), "image/png"))],
                          data={"settings": json.dumps(settings)}, timeout=120)

    responses = []
    try:
        wait_until(ready, timeout_s=120, what="the server to be ready")
        response = post({"prompt": "next?", "height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2})
        assert response.status_code == 200, response.text
        assert response.json()["settings"]["num_frames"] == 5 and response.json()["video_mp4_base64"]

        largest = {"prompt": "next?", "height": 128, "width": 128, "num_frames": 33, "num_inference_steps": 40,
                   "guidance_scale": 3.0, "max_new_tokens": 1}
        client = threading.Thread(target=lambda: responses.append(post(largest)), daemon=True)
        client.start()
        wait_until(lambda: "foresight_queue_depth 1.0" in httpx.get(f"{url}/metrics").text, what="in flight")
    finally:
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    stopped_after = time.monotonic() - signalled
    assert process.returncode in (0, -signal.SIGTERM), output  # uvicorn re-raises the signal it handled
    assert stopped_after < grace_s, f"took {stopped_after:.1f} s: the grace period ran out\n{output}"
    client.join(30)
    assert [r.status_code for r in responses] == [503], output
    assert "cancelled: the server is shutting down" in responses[0].json()["detail"]
    assert responses[0].headers["retry-after"] == "1"
