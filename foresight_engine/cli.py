"""`foresight-engine` command line: one subcommand per job (`predict`, ...). `foresight-engine --help` lists them."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .builders import cli as builders_cli
from .errors import ForesightError

log = logging.getLogger("foresight_engine")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("model (a preset with seeded random weights, or real weights from local folders)")
    src.add_argument("--preset", default=None, help="tiny | small (seeded random weights)")
    src.add_argument("--seed-weights", type=int, default=0, help="weight seed for --preset (default 0)")
    src.add_argument("--vlm", type=Path, help="Qwen2.5-VL Hugging Face folder (model, tokenizer, processor)")
    src.add_argument("--decoder", type=Path, help="diffusers LTX-Video folder (transformer/, vae/, scheduler/)")
    src.add_argument("--glue", type=Path, help="safetensors file with the query tokens and the adapter")
    src.add_argument("--lora", type=Path, help="optional LoRA of the LTX transformer, fused at load")


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
    p.set_defaults(func=_predict)


def _load_engine(args):
    from .engine import Engine
    if getattr(args, "engine", None) is not None:
        return Engine.load(args.engine, progress=True)
    real = [args.vlm, args.decoder, args.glue]
    if any(real):
        if not all(real):
            raise ForesightError("real weights need all of --vlm, --decoder and --glue")
        return Engine.from_pretrained(args.vlm, args.decoder, args.glue, lora=args.lora, progress=True)
    return Engine.from_preset(args.preset or "tiny", seed=args.seed_weights, progress=True)


def _predict(args) -> int:
    from .video_io import write_mp4
    engine = _load_engine(args)
    pred = engine.predict([str(p) for p in args.image], args.prompt, height=args.height, width=args.width,
                          num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.guidance,
                          max_new_tokens=args.max_new_tokens, seed=args.seed, frame_rate=args.fps)
    args.out.mkdir(parents=True, exist_ok=True)
    video = write_mp4(pred.frames, args.out / "prediction.mp4", fps=pred.settings["frame_rate"])
    summary = {**pred.to_dict(), "model": engine.config.name, "images": [str(p) for p in args.image],
               "prompt": args.prompt, "video": str(video)}
    _write_json(args.out / "prediction.json", summary)
    print(f"text: {pred.text!r}")
    print("timings (s): " + ", ".join(f"{k}={v:.3f}" for k, v in pred.timings.to_dict().items()))
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
