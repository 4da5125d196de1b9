"""What serving adds to a reasoning step: the same request through `Engine.predict` and through POST /v1/predict
over loopback (multipart upload, worker thread, mp4 encode, base64 JSON). Same process, same engine.

    python -m pytest bench/test_serve_overhead.py --benchmark-group-by=group
"""
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from foresight_engine import Engine
from foresight_engine.serve import create_app
from foresight_engine.serve.background import BackgroundServer

SETTINGS = {"height": 64, "width": 64, "num_frames": 9, "num_inference_steps": 4, "max_new_tokens": 8}


@pytest.fixture(scope="module")
def setup():
    image = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image, "PNG")
    engine = Engine.from_preset("tiny", seed=0)
    with BackgroundServer(create_app(engine, warmup=False)) as server, httpx.Client(timeout=120) as client:
        yield engine, image.getvalue(), server, client


def test_direct_predict(benchmark, setup):
    engine, image, _, _ = setup
    benchmark.group = "serve/overhead"
    result = benchmark.pedantic(lambda: engine.predict(image, "What happens next?", **SETTINGS),
                                rounds=10, warmup_rounds=2)
    assert result.frames.shape == (9, 64, 64, 3)


def test_http_predict(benchmark, setup):
    _, image, server, client = setup
    benchmark.group = "serve/overhead"

    def post():
        return client.post(f"{server.url}/v1/predict", files=[("image", ("a.png", image, "image/png"))],
                           data={"settings": json.dumps({"prompt": "What happens next?", **SETTINGS})})

    response = benchmark.pedantic(post, rounds=10, warmup_rounds=2)
    assert response.status_code == 200 and response.json()["video_mp4_base64"]
