"""Scale-out on Ray Serve: one replica per GPU, each with its own engine behind the same HTTP/WebSocket API.

    from ray import serve
    from foresight_engine.serve import EngineSource
    from foresight_engine.serve.ray import build_deployment
    serve.run(build_deployment(EngineSource(engine_dir="artifacts/small")), route_prefix="/")

or on a cluster (`ray start --head` here, `ray start --address=HEAD:6379` on every GPU node):

    serve run foresight_engine.serve.ray:app engine_dir=/shared/artifacts/small device=cuda

Ray Serve routes each request to a replica (its proxy forwards WebSockets too); `/v1/videos/{id}` is only on the
replica that made the video, so behind several replicas ask for `video=base64`. Needs the `[ray]` extra.
"""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .app import create_app
from .engine_source import EngineSource


class EngineDeployment:
    """One replica: builds its engine in the replica process, then Ray Serve serves `create_app(engine)`
    (`serve.ingress()` calls `__serve_build_asgi_app__` after the constructor)."""

    def __init__(self, source: EngineSource, app_options: dict[str, Any] | None = None):
        self.engine = source.load()
        self._app_options = app_options or {}

    def __serve_build_asgi_app__(self):
        return create_app(self.engine, **self._app_options)


def deployment_options(num_gpus: int, num_replicas: int | None = None) -> dict[str, Any]:
    """One replica per GPU (each owns one: `num_gpus=1`); without GPUs, `num_replicas` CPU replicas (default 1)."""
    if num_gpus > 0:
        return {"num_replicas": num_replicas or num_gpus, "ray_actor_options": {"num_gpus": 1}}
    return {"num_replicas": num_replicas or 1, "ray_actor_options": {"num_gpus": 0}}


def cluster_gpus() -> int:
    """GPUs of the connected Ray cluster (this machine's when Ray is not started yet)."""
    import ray
    if ray.is_initialized():
        return int(ray.cluster_resources().get("GPU", 0))
    import torch
    return torch.cuda.device_count()


def build_deployment(source: EngineSource, *, app_options: dict[str, Any] | None = None,
                     num_replicas: int | None = None, num_gpus: int | None = None, name: str = "foresight-engine"):
    """A bound Ray Serve application (`serve.run(...)` it, or return it from a `serve run module:builder` target).
    `num_gpus`: GPUs to spread over (default: the cluster's); `app_options`: `create_app` options per replica."""
    from ray import serve
    options = deployment_options(cluster_gpus() if num_gpus is None else num_gpus, num_replicas)
    deployment = serve.deployment(serve.ingress()(EngineDeployment), name=name, **options)
    return deployment.bind(source, app_options)


def app(args: dict[str, str]):
    """`serve run foresight_engine.serve.ray:app engine_dir=DIR | preset=P [device=cuda seed=K max_queue_size=N
    max_request_cost=N num_replicas=N]`: Ray Serve's application-builder entry point (its arguments arrive as strings).
    `device` goes to the engine (each GPU replica sees only its own GPU, as `cuda`)."""
    known = {"engine_dir", "preset", "device", "seed", "max_queue_size", "max_request_cost", "num_replicas"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise ConfigError(f"unknown argument(s) {unknown}; known: {sorted(known)}")
    engine_kwargs: dict[str, object] = {k: int(args[k]) for k in ("max_queue_size", "max_request_cost") if k in args}
    source = EngineSource(engine_dir=args.get("engine_dir"), preset=args.get("preset"),
                          seed=int(args.get("seed", 0)), device=args.get("device"), engine_kwargs=engine_kwargs)
    replicas = int(args["num_replicas"]) if "num_replicas" in args else None
    return build_deployment(source, num_replicas=replicas)
