"""`foresight-engine serve`: the HTTP/WebSocket app of `foresight_engine.serve` under uvicorn."""
from __future__ import annotations

from pathlib import Path

from .model_args import add_device_arg


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve the engine over HTTP and WebSocket (needs the [serve] extra)",
                       description="Serve POST /v1/predict, WS /v1/stream, /healthz, /readyz and /metrics.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--engine", type=Path, help="a built artifact directory (foresight-engine build)")
    src.add_argument("--preset", help="tiny | small (seeded random weights)")
    p.add_argument("--seed-weights", type=int, default=0, help="weight seed for --preset (default 0)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-queue-size", type=int, default=8, help="requests in flight before 429 (default 8)")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="largest request body (default 32)")
    p.add_argument("--video", choices=["base64", "url"], default="base64",
                   help="default video delivery: base64 in the JSON, or a URL under /v1/videos/{id}")
    p.add_argument("--no-warmup", action="store_true", help="report ready without a warm-up predict")
    p.add_argument("--max-request-cost", type=int, default=None,
                   help="budget of one request in token passes (default: the model's generation.limits.max_cost)")
    p.add_argument("--shutdown-grace-s", type=float, default=10.0,
                   help="on SIGTERM/SIGINT: requests in flight are cancelled at once; open connections get this "
                        "long to close (default 10)")
    add_device_arg(p, "where the engine runs")
    p.set_defaults(func=run, flags={"directory": "--engine", "preset": "--preset", "device": "--device"})


def run(args) -> int:
    from ..errors import ForesightError
    from ..serve import EngineSource, create_app
    from ..serve.shutdown import run_until_signalled
    if not args.shutdown_grace_s > 0:
        raise ForesightError(f"--shutdown-grace-s {args.shutdown_grace_s} must be > 0")
    source = EngineSource(engine_dir=args.engine and str(args.engine), preset=args.preset, seed=args.seed_weights,
                          device=args.device, engine_kwargs={"max_queue_size": args.max_queue_size,
                                                             "max_request_cost": args.max_request_cost})
    max_upload = int(args.max_upload_mb * 2**20)
    app = create_app(source.load(), max_upload_bytes=max_upload, video=args.video, warmup=not args.no_warmup)
    # uvicorn drops WebSocket messages over ws_max_size unanswered; above the app's own limit (base64 text
    # counts), the app answers with a 413 error message.
    run_until_signalled(app, host=args.host, port=args.port, grace_s=args.shutdown_grace_s,
                        ws_max_size=2 * max_upload, log_level="debug" if args.verbose else "info")
    return 0
