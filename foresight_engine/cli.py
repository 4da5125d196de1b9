"""`foresight-engine` command line: one subcommand per job (`predict`, ...). `foresight-engine --help` lists them."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .bench.cli import add_bench_parser, add_plan_parser
from .builders import cli as builders_cli
from .errors import ForesightError
from .verify import cli as verify_cli

log = logging.getLogger("foresight_engine")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("model (a preset with seeded random weights, or real weights from local folders)")
    src.add_argument("--preset", default=None, help="tiny | small (seeded random weights; -hunyuan15 / -hybrid "
                                                    "variants: HunyuanVideo-1.5 decoder / DINOv2 hybrid encoder)")
    src.add_argument("--seed-weights", type=int, default=0, help="weight seed for --preset (default 0)")
    src.add_argument("--vlm", type=Path, help="Qwen2.5-VL Hugging Face folder (model, tokenizer, processor)")
    src.add_argument("--decoder", type=Path, help="diffusers video decoder folder (transformer/, vae/, scheduler/): "
                                                  "LTX-Video or HunyuanVideo-1.5, told apart by its transformer")
    src.add_argument("--glue", type=Path, help="safetensors file with the query tokens and the adapter")
    src.add_argument("--lora", type=Path, help="optional LoRA of the decoder's transformer, fused at load")
    src.add_argument("--spatial", type=Path, help="DINOv2 folder: the hybrid encoder (a glue file made with it)")


def _add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="run one reasoning step: text answer + predicted video",
                       description="Run one reasoning step and write DIR/prediction.mp4 and DIR/prediction.json.")
    _add_model_args(p)
    p.add_argument("--engine", type=Path, help="a built artifact directory (foresight-engine build) to run")
    p.add_argument("--image", type=Path, action="append", required=True,
                   help="input image; repeat for several (the last one is the video's first frame)")
    p.add_argument("--prompt", required=True, help="the user's question")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--frames", type=int, help="number of frames (r*k+1)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int, help="denoising steps")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (1 disables it)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--fps", type=int, help="frame rate of the video (default: the preset's)")
    p.add_argument("--actual", type=Path, help="the video of what really happened: verify the prediction against it")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.set_defaults(func=_predict)


def _add_serve_parser(sub) -> None:
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
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    import uvicorn

    from .serve import EngineSource, create_app
    source = EngineSource(engine_dir=args.engine and str(args.engine), preset=args.preset, seed=args.seed_weights,
                          device=args.device, engine_kwargs={"max_queue_size": args.max_queue_size})
    max_upload = int(args.max_upload_mb * 2**20)
    app = create_app(source.load(), max_upload_bytes=max_upload, video=args.video, warmup=not args.no_warmup)
    # uvicorn drops WebSocket messages over ws_max_size unanswered; above the app's own limit (base64 text
    # counts), the app answers with a 413 error message.
    uvicorn.run(app, host=args.host, port=args.port, ws_max_size=2 * max_upload,
                log_level="debug" if args.verbose else "info")
    return 0


def _load_engine(args):
    from .engine import Engine
    if getattr(args, "engine", None) is not None:
        return Engine.load(args.engine, device=args.device, progress=True)
    real = [args.vlm, args.decoder, args.glue]
    if any(real):
        if not all(real):
            raise ForesightError("real weights need all of --vlm, --decoder and --glue")
        return Engine.from_pretrained(args.vlm, args.decoder, args.glue, lora=args.lora, spatial=args.spatial,
                                      device=args.device, progress=True)
    return Engine.from_preset(args.preset or "tiny", seed=args.seed_weights, device=args.device, progress=True)


def _stream_prediction(engine, events):
    """Show the answer as it is decoded (stdout) and a progress bar for the video (stderr); return the Prediction."""
    from tqdm.auto import tqdm

    from .engine.events import DenoiseStep, Done, FramesReady, TextToken
    engine.progress = False  # the bar below follows the stream instead
    bar = None
    print("text: ", end="", flush=True)
    try:
        for event in events:
            if isinstance(event, TextToken):
                print(event.text, end="", flush=True)
            elif isinstance(event, DenoiseStep):
                bar = bar or tqdm(total=event.total, desc="video", unit="step", leave=False)
                bar.update(1)
            elif isinstance(event, FramesReady) and bar is not None:
                bar.close()
            elif isinstance(event, Done):
                print()
                return event.prediction
    finally:
        if bar is not None:
            bar.close()
    raise RuntimeError("the stream ended without a Done event")


def _predict(args) -> int:
    from .video_io import write_mp4
    engine = _load_engine(args)
    events = engine.stream([str(p) for p in args.image], args.prompt, height=args.height, width=args.width,
                           num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.guidance,
                           max_new_tokens=args.max_new_tokens, seed=args.seed, frame_rate=args.fps,
                           actual=args.actual)
    pred = _stream_prediction(engine, events)
    args.out.mkdir(parents=True, exist_ok=True)
    video = write_mp4(pred.frames, args.out / "prediction.mp4", fps=pred.settings["frame_rate"])
    summary = {**pred.to_dict(), "model": engine.config.name, "images": [str(p) for p in args.image],
               "prompt": args.prompt, "video": str(video)}
    _write_json(args.out / "prediction.json", summary)
    print(f"answer: {pred.text!r}")
    print("timings (s): " + ", ".join(f"{k}={v:.3f}" for k, v in pred.timings.to_dict().items()))
    if pred.verification is not None:
        print(pred.verification.summary())
    print(f"video: {video}")
    print(f"json:  {args.out / 'prediction.json'}")
    return 0


def _write_json(path: Path, data: dict) -> None:
    from .video_io import atomic_output
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="foresight-engine", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_predict_parser(sub)
    _add_serve_parser(sub)
    verify_cli.add_parser(sub)
    add_bench_parser(sub)
    add_plan_parser(sub)
    builders_cli.add_parsers(sub, _add_model_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ForesightError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
