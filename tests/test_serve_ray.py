"""Ray Serve scale-out. The deployment class is tested directly (fast); a real local Ray instance (~50 s on
2 loaded cores, beyond this suite's budget) runs with FORESIGHT_RAY_TESTS=1."""
from __future__ import annotations

import base64
import json
import os

import httpx
import pytest
import torch
from websockets.sync.client import connect

pytest.importorskip("ray.serve")

from foresight_engine.errors import ConfigError, DeviceUnavailable  # noqa: E402
from foresight_engine.serve import EngineSource  # noqa: E402
from foresight_engine.serve.ray import EngineDeployment, app, build_deployment, deployment_options  # noqa: E402
from serve_helpers import LiveServer, free_port, png_bytes  # noqa: E402

SETTINGS = {"prompt": "next?", "height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2}
WARMUP = {"warmup_settings": {"height": 32, "width": 32, "num_frames": 5}}


def predict_and_stream(url: str, ws_url: str, image) -> None:
    response = httpx.post(f"{url}/v1/predict", files=[("image", ("a.png", png_bytes(image), "image/png"))],
                          data={"settings": json.dumps(SETTINGS)}, timeout=120)
    assert response.status_code == 200, response.text
    with connect(f"{ws_url}/v1/stream", max_size=None) as ws:
        ws.send(json.dumps({**SETTINGS, "images": [base64.b64encode(png_bytes(image)).decode()]}))
        kinds = [json.loads(m)["type"] for m in ws]
    assert kinds[-1] == "done" and "denoise" in kinds, kinds


def test_one_replica_per_gpu():
    assert deployment_options(4) == {"num_replicas": 4, "ray_actor_options": {"num_gpus": 1}}
    assert deployment_options(0) == {"num_replicas": 1, "ray_actor_options": {"num_gpus": 0}}
    assert deployment_options(0, num_replicas=3)["num_replicas"] == 3


def test_engine_source_needs_exactly_one_origin():
    with pytest.raises(ConfigError, match="exactly one of engine_dir= or preset="):
        EngineSource()
    with pytest.raises(ConfigError, match="exactly one"):
        EngineSource(engine_dir="x", preset="tiny")


def test_replica_builds_its_engine_and_serves_the_same_api(image):
    replica = EngineDeployment(EngineSource(preset="tiny", engine_kwargs={"max_queue_size": 2}), WARMUP)
    with LiveServer(replica.__serve_build_asgi_app__()) as server:
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        predict_and_stream(server.url, server.ws_url, image)


def test_build_deployment_binds_the_replica_class():
    app = build_deployment(EngineSource(preset="tiny"), app_options=WARMUP, num_gpus=2)
    deployment = app._bound_deployment  # Application has no public accessor for its deployment
    assert deployment.num_replicas == 2 and deployment.ray_actor_options["num_gpus"] == 1
    assert deployment.name == "foresight-engine"


def test_serve_run_entry_point_parses_its_string_arguments():
    bound = app({"preset": "tiny", "max_queue_size": "3", "num_replicas": "2"})._bound_deployment
    assert bound.num_replicas == 2
    source, _ = bound.init_args
    assert source == EngineSource(preset="tiny", engine_kwargs={"max_queue_size": 3})
    with pytest.raises(ConfigError, match="unknown argument"):
        app({"preset": "tiny", "gpus": "1"})
    source, _ = app({"engine_dir": "/shared/art", "device": "cuda"})._bound_deployment.init_args
    assert source == EngineSource(engine_dir="/shared/art", device="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_replica_device_reaches_the_engine():
    """Regression: `device=cuda` with a preset raised TypeError (Engine.__init__ had no device); now the replica's
    engine is built on that device, or fails at once naming CUDA where there is none."""
    replica = EngineDeployment(EngineSource(preset="tiny", device="cpu", engine_kwargs={"max_queue_size": 1}))
    assert replica.engine.device == torch.device("cpu")
    with pytest.raises(DeviceUnavailable, match="CUDA"):
        EngineDeployment(EngineSource(preset="tiny", device="cuda"))


@pytest.mark.skipif(os.environ.get("FORESIGHT_RAY_TESTS") != "1", reason="set FORESIGHT_RAY_TESTS=1 (~50 s)")
def test_local_ray_cluster_serves_http_and_websocket(image):
    import ray
    from ray import serve
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_deployment(EngineSource(preset="tiny"), app_options=WARMUP), route_prefix="/")
        predict_and_stream(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", image)
    finally:
        serve.shutdown()
        ray.shutdown()
