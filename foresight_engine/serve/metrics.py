"""Prometheus metrics of one app, in a registry of its own (two apps in one process never share counters)."""
from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from ..engine.prediction import Prediction

# Seconds: a tiny-preset stage takes milliseconds, a full-model denoise tens of seconds.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0)


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, in_flight: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("foresight_requests", "Prediction requests by endpoint and final HTTP status",
                                ["endpoint", "status"], registry=self.registry)
        self.queue_depth = Gauge("foresight_queue_depth", "Requests in flight in the engine (waiting + running)",
                                 registry=self.registry)
        self.queue_depth.set_function(in_flight)
        self.stage_seconds = Histogram("foresight_stage_seconds", "Stage latency from Prediction.timings; "
                                       "stage=total is the whole reasoning step", ["stage"], buckets=_BUCKETS,
                                       registry=self.registry)

    def observe(self, prediction: Prediction) -> None:
        for stage, seconds in prediction.timings.stages.items():
            self.stage_seconds.labels(stage=stage).observe(seconds)
        self.stage_seconds.labels(stage="total").observe(prediction.timings.total)

    def render(self) -> bytes:
        return generate_latest(self.registry)
