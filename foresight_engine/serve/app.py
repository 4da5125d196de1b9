"""`create_app(engine)`: the HTTP/WebSocket API of one engine, as a FastAPI app.

Routes: POST /v1/predict, WS /v1/stream, GET /v1/videos/{id}, GET /healthz, GET /readyz, GET /metrics.
Engine calls run on worker threads; a client that goes away has its request cancelled (it stops within one block).
At shutdown (the lifespan's end, or `close()`: `foresight-engine serve` calls it on SIGTERM) the app refuses new
requests and cancels its requests in flight, whose clients get a 503.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from typing import Any, Callable, ContextManager

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response

from ..engine.events import Done
from ..engine.prediction import Prediction
from ..errors import EngineClosed, RequestCancelled
from .metrics import ServeMetrics
from .options import ServeOptions
from .protocol import (CLIENT_CLOSED, ClientRequest, Rejected, encode_base64, error_detail, error_status,
                       event_message, parse_settings, parse_stream_message, prediction_body)
from .runner import EngineRunner
from .upload import read_multipart
from .videos import VideoStore, encode_mp4

log = logging.getLogger(__name__)


class Warmup:
    """One small predict() before the app reports ready; started at startup, or by the first /readyz when the
    app is mounted in another one (mounted apps get no lifespan events)."""

    def __init__(self, engine, runner: EngineRunner, options: ServeOptions,
                 tracking: Callable[[str], ContextManager[None]]):
        self._engine, self._runner, self._tracking = engine, runner, tracking
        self._enabled = options.warmup
        gen = engine.config.generation
        self.settings = {"height": gen.height, "width": gen.width, "num_frames": gen.num_frames,
                         "num_inference_steps": 1, "max_new_tokens": 1, **(options.warmup_settings or {})}
        self._future = None

    def start(self) -> None:
        """Start the warm-up, or retry it after a failure (e.g. QueueFull under a burst at startup)."""
        failed = self._future is not None and self._future.done() and self._future.exception() is not None
        if self._enabled and (self._future is None or failed):
            self._future = self._runner.submit(self._run)

    def _run(self) -> None:
        image = np.full((self.settings["height"], self.settings["width"], 3), 128, np.uint8)
        request_id = f"warm-up-{uuid.uuid4().hex}"
        with self._tracking(request_id):
            self._engine.predict(image, "warm-up", request_id=request_id, **self.settings)
        log.info("engine warmed up with %s", self.settings)

    def status(self) -> str:
        if not self._enabled:
            return "ready"
        if self._future is None:
            return "not started"
        if not self._future.done():
            return "warming up"
        error = self._future.exception()
        return "ready" if error is None else f"warm-up failed: {error!r}"


class _Server:
    """Everything one app holds: the engine, its threads, recent videos, metrics."""

    def __init__(self, engine, options: ServeOptions):
        self.engine = engine
        self.options = options
        self.max_images = options.max_images or engine.config.processor.max_images
        self.runner = EngineRunner(options.worker_threads)
        self.videos = VideoStore(options.video_store_items, options.video_store_bytes)
        self.metrics = ServeMetrics(lambda: engine.in_flight)
        self.warmup = Warmup(engine, self.runner, options, self.tracking)
        self.closing: str | None = None  # why the app no longer takes requests
        self._in_flight: set[str] = set()  # this app's requests (the engine may serve others too)
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def tracking(self, request_id: str):
        """Count `request_id` as this app's while the body runs; refused (503) once the app is closing."""
        with self._lock:
            if self.closing is not None:
                raise EngineClosed(f"{self.closing}: not taking new requests")
            self._in_flight.add(request_id)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight.discard(request_id)

    def close(self, reason: str = "the server is shutting down") -> int:
        """Refuse new requests and cancel this app's requests in flight (each stops within one block); returns how
        many. Thread-safe (a signal handler's thread calls it)."""
        with self._lock:
            self.closing = reason
            request_ids = list(self._in_flight)
        for request_id in request_ids:
            self.engine.cancel(request_id)
        log.info("%s: cancelled %d request(s) in flight", reason, len(request_ids))
        return len(request_ids)

    def as_served(self, exc: BaseException) -> BaseException:
        """A request cancelled because the app is closing is a 503 (retry elsewhere), not a client's 499."""
        if self.closing is not None and isinstance(exc, RequestCancelled) and not isinstance(exc, EngineClosed):
            return EngineClosed(f"{exc}: {self.closing}")
        return exc

    def call_kwargs(self, request: ClientRequest, request_id: str) -> dict[str, Any]:
        return {"images": request.images, "request_id": request_id, **request.kwargs}

    async def result(self, request_id: str, prediction: Prediction, video_mode: str, video_path) -> dict[str, Any]:
        """The final JSON body, with the video encoded as mp4 (on a worker thread: ffmpeg takes a while)."""
        self.metrics.observe(prediction)
        data = await self.runner.call(encode_mp4, prediction.frames, int(prediction.settings["frame_rate"]))
        if video_mode == "base64":
            video = {"video_mp4_base64": encode_base64(data)}
        elif self.videos.put(request_id, data):
            video = {"video_url": video_path(request_id)}
        else:
            raise Rejected(507, f"the video ({len(data)} bytes) is larger than the video store "
                                f"({self.options.video_store_bytes} bytes); ask for video=base64")
        return prediction_body(request_id, prediction, video)

    def error_response(self, exc: BaseException) -> JSONResponse:
        exc = self.as_served(exc)
        status = error_status(exc)
        if status == 500:
            log.error("request failed", exc_info=exc)
        headers = {"Retry-After": str(self.options.retry_after_s)} if status in (429, 503) else None
        return JSONResponse({"detail": error_detail(exc, status)}, status_code=status, headers=headers)


def create_app(engine, **options) -> FastAPI:
    """A FastAPI app serving `engine`; keyword arguments are `ServeOptions` fields (limits, video delivery,
    warm-up). Run it with uvicorn, or mount it in an existing app: `app.mount("/world", create_app(engine))`."""
    server = _Server(engine, ServeOptions(**options))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        server.warmup.start()
        yield
        server.close()
        server.runner.shutdown()

    app = FastAPI(title="foresight-engine", lifespan=lifespan)
    app.state.foresight = server

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        status = server.warmup.status()
        server.warmup.start()  # lazily when mounted; again after a failed warm-up
        if status == "not started":
            status = server.warmup.status()
        return JSONResponse({"status": status}, status_code=200 if status == "ready" else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=server.metrics.content_type)

    @app.get("/v1/videos/{video_id}", name="video")
    async def get_video(video_id: str) -> Response:
        data = server.videos.get(video_id)
        if data is None:
            return JSONResponse({"detail": f"no video {video_id!r} (unknown, or dropped from the store)"}, 404)
        return Response(data, media_type="video/mp4")

    @app.post("/v1/predict")
    async def predict(request: Request, video: str | None = None) -> JSONResponse:
        request_id = uuid.uuid4().hex
        status = 200
        try:
            images, settings = await read_multipart(request, server.options.max_upload_bytes, server.max_images)
            if video is not None and isinstance(settings, dict) and settings.setdefault("video", video) != video:
                raise Rejected(422, f"video={video!r} in the query and {settings['video']!r} in settings disagree")
            client_request = parse_settings(settings, images, server.options.video, server.max_images)
            prediction = await _predict_until_disconnect(server, request, client_request, request_id)
            body = await server.result(request_id, prediction, client_request.video,
                                       lambda vid: request.url_for("video", video_id=vid).path)
            return JSONResponse(body, headers={"X-Request-Id": request_id})
        except Exception as exc:
            response = server.error_response(exc)
            status = response.status_code
            return response
        finally:
            server.metrics.requests.labels(endpoint="predict", status=str(status)).inc()

    @app.websocket("/v1/stream")
    async def stream(websocket: WebSocket) -> None:
        await websocket.accept()
        await _stream(server, websocket)

    return app


async def _predict_until_disconnect(server: _Server, request: Request, client_request: ClientRequest,
                                    request_id: str) -> Prediction:
    async def cancel_on_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        log.info("client of request %s disconnected: cancelling it", request_id)
        server.engine.cancel(request_id)

    with server.tracking(request_id):
        watcher = asyncio.create_task(cancel_on_disconnect())
        try:
            return await server.runner.call(server.engine.predict, **server.call_kwargs(client_request, request_id))
        finally:
            watcher.cancel()


async def _stream(server: _Server, websocket: WebSocket) -> None:
    """One request per connection: receive it, send its events, the `done` result (or an `error`), close."""
    request_id = uuid.uuid4().hex
    client_gone = asyncio.Event()
    status = CLIENT_CLOSED  # until `done` or an error message is sent
    watcher = None
    try:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            client_gone.set()
            return
        text = message.get("text")
        if text is None:
            text = message.get("bytes") or b""
        if len(text) > server.options.max_upload_bytes:
            raise Rejected(413, f"request message of {len(text)} bytes exceeds the limit of "
                                f"{server.options.max_upload_bytes} bytes")
        client_request = parse_stream_message(text, server.options.video, server.max_images)

        async def cancel_on_disconnect() -> None:
            # Any further message is a cancel request; a closed socket cancels too.
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                client_gone.set()
            log.info("request %s: client %s, cancelling", request_id,
                     "disconnected" if client_gone.is_set() else "asked to cancel")
            server.engine.cancel(request_id)

        kwargs = server.call_kwargs(client_request, request_id)
        with server.tracking(request_id):
            watcher = asyncio.create_task(cancel_on_disconnect())
            async for event in server.runner.iterate(lambda: server.engine.stream(**kwargs)):
                if isinstance(event, Done):
                    body = await server.result(request_id, event.prediction, client_request.video,
                                               lambda vid: websocket.url_for("video", video_id=vid).path)
                    await websocket.send_json({"type": "done", **body})
                    status = 200
                else:
                    await websocket.send_json(event_message(event))
    except WebSocketDisconnect:
        client_gone.set()
        server.engine.cancel(request_id)
    except Exception as exc:
        exc = server.as_served(exc)
        error = error_status(exc)
        if error == 500:
            log.error("stream request %s failed", request_id, exc_info=exc)
        if not client_gone.is_set():
            try:
                message = {"type": "error", "request_id": request_id, "status": error,
                           "detail": error_detail(exc, error)}
                if error in (429, 503):
                    message["retry_after_s"] = server.options.retry_after_s
                await websocket.send_json(message)
                status = error
            except WebSocketDisconnect:
                client_gone.set()
    finally:
        if watcher is not None:
            watcher.cancel()
        if not client_gone.is_set():
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client closed first
                await websocket.close()
        server.metrics.requests.labels(endpoint="stream", status=str(status)).inc()
