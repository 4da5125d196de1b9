"""`foresight-engine predict`: one reasoning step from the command line; the answer streams to stdout, a bar
follows the denoising, and the video, a JSON summary and (optionally) the stage timeline are written."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .flags import REQUEST_FLAGS
from .model_args import add_engine_args, check_model_args, load_engine


def add_parser(sub) -> None:
    p = sub.add_parser("predict", help="run one reasoning step: text answer + predicted video",
                       description="Run one reasoning step and write DIR/prediction.mp4 and DIR/prediction.json. "
                                   "Frames come out at the model's size (--height/--width, default the preset's): "
                                   "the last image is resized to it, stretched if its aspect ratio differs.")
    add_engine_args(p)
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
    p.add_argument("--plot", type=Path, help="write the request's stage timeline here (.png; needs the [plot] extra)")
    p.set_defaults(func=run, flags=REQUEST_FLAGS | {"plot": "--plot"})


def run(args: argparse.Namespace) -> int:
    from ..engine.request import build_messages, load_image, resolve_settings
    from ..errors import InvalidInputError
    from ..video_io import atomic_output, write_mp4

    # everything the user typed is checked before any weights load (real weights take minutes)
    config = check_model_args(args)
    settings = dict(height=args.height, width=args.width, num_frames=args.frames, num_inference_steps=args.steps,
                    guidance_scale=args.guidance, max_new_tokens=args.max_new_tokens, seed=args.seed,
                    frame_rate=args.fps)
    if config is not None:
        resolve_settings(config, **settings)
    images = [load_image(path, i) for i, path in enumerate(args.image)]
    build_messages(args.prompt, None, len(images), None)  # an empty prompt; the engine checks the text itself
    actual = None
    if args.actual is not None:
        from ..verify.clips import load_clip
        actual = load_clip(args.actual, "actual")
    if args.plot is not None:
        from ..plotting import require_matplotlib
        if args.plot.suffix.lower() != ".png":
            raise InvalidInputError(f"plot={str(args.plot)!r} must be a .png path")
        require_matplotlib()

    engine = load_engine(args, progress=True)
    events = engine.stream(images, args.prompt, actual=actual, **settings)
    pred = stream_to_terminal(engine, events)
    args.out.mkdir(parents=True, exist_ok=True)
    video = write_mp4(pred.frames, args.out / "prediction.mp4", fps=pred.settings["frame_rate"])
    summary = {**pred.to_dict(), "model": engine.config.name, "images": [str(p) for p in args.image],
               "prompt": args.prompt, "video": str(video)}
    with atomic_output(args.out / "prediction.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    print(f"answer: {pred.text!r}")
    print("timings (s): " + ", ".join(f"{k}={v:.3f}" for k, v in pred.timings.to_dict().items()))
    if pred.verification is not None:
        print(pred.verification.summary())
    print(f"video: {video}")
    print(f"json:  {args.out / 'prediction.json'}")
    if args.plot is not None:
        from ..bench.timeline import plot_timelines
        s = pred.settings
        plot_timelines({"this request": pred.timings}, args.plot,
                       f"{engine.config.name}: {s['num_frames']} frames at {s['height']}x{s['width']}, "
                       f"{s['num_inference_steps']} steps, {len(pred.token_ids)} tokens")
        print(f"plot:  {args.plot}")
    return 0


def stream_to_terminal(engine, events):
    """Show the answer as it is decoded (stdout) and a progress bar for the video (stderr); return the Prediction."""
    from tqdm.auto import tqdm

    from ..engine.events import DenoiseStep, Done, FramesReady, TextToken
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
