"""`foresight-engine ui`: the browser demo (`ui/app.py`) on a local port."""
from __future__ import annotations

import argparse
import tempfile

from ..cli.flags import REQUEST_FLAGS
from ..cli.model_args import add_engine_args, check_model_args, load_engine


def add_parser(sub) -> None:
    p = sub.add_parser("ui", help="a demo in the browser: upload images, watch the answer stream and the clip "
                                  "(needs the [ui] extra)",
                       description="Serve the demo UI (Gradio) for a preset, a built artifact (--engine DIR) or real "
                                   "weights (--vlm/--decoder/--glue); open the printed URL in a browser.")
    add_engine_args(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.set_defaults(func=run, flags=REQUEST_FLAGS)


def run(args: argparse.Namespace) -> int:
    from .app import create_demo, launch, require_gradio
    check_model_args(args)
    require_gradio()  # before the model loads
    engine = load_engine(args)
    with tempfile.TemporaryDirectory(prefix="foresight-ui-") as workdir:  # example scenes, predicted mp4s
        demo = create_demo(engine, workdir)
        print(f"foresight-engine ui: the {engine.config.name} model on http://{args.host}:{args.port} "
              "(Ctrl-C stops it)", flush=True)
        launch(demo, args.host, args.port, quiet=True)
    return 0
