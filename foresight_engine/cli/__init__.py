"""`foresight-engine` command line: one subcommand per job (`predict`, `ui`, `build`, ...).

Each subcommand lives in its own module with one function that registers its parser (`add_parser(sub)`) and a
handler that imports the heavy packages (torch, transformers, diffusers, gradio) only when it runs, so
`foresight-engine --help` and `--version` answer without loading any of them. Errors are printed in the user's
own words: the flags they typed, not the Python arguments behind them (`flags.py`).
"""
from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..errors import ForesightError
from .flags import flags_of, in_flags


def build_parser() -> argparse.ArgumentParser:
    from ..bench.cli import add_bench_parser, add_plan_parser
    from ..builders import cli as builders_cli
    from ..ui import cli as ui_cli
    from ..verify import cli as verify_cli
    from . import predict, serve

    parser = argparse.ArgumentParser(
        prog="foresight-engine", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="One reasoning step of a vision-language world model, fast: images + a question in, a text "
                    "answer and a\nshort predicted video of what happens next out. `foresight-engine COMMAND --help` "
                    "describes each command.",
        epilog="first run (tiny preset, seconds on a CPU):\n  foresight-engine predict --preset tiny --image "
               "assets/example.png --prompt 'What happens next?' --out out/demo\n  foresight-engine ui --preset tiny")
    parser.add_argument("--version", action="version", version=f"foresight-engine {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict.add_parser(sub)
    ui_cli.add_parser(sub)
    serve.add_parser(sub)
    verify_cli.add_parser(sub)
    add_bench_parser(sub)
    add_plan_parser(sub)
    builders_cli.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ForesightError as exc:
        print(f"error: {in_flags(exc, flags_of(args))}", file=sys.stderr)
        return 2
