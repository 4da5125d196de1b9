"""The `verify` subcommand, registered into the main CLI by `add_parser(subparsers)`."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .lpips_names import LPIPS_NETS, WEIGHTS_ENV


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `verify --pred A.mp4 --actual B.mp4 [...]`; its handler is set as `func`."""
    parser = subparsers.add_parser("verify", help="compare a predicted video with the actual one",
                                   description="PSNR, SSIM, LPIPS and temporal consistency of --pred vs --actual.")
    parser.add_argument("--pred", type=Path, required=True, help="predicted video")
    parser.add_argument("--actual", type=Path, required=True, help="actual (ground-truth) video")
    parser.add_argument("--lpips-net", choices=LPIPS_NETS, default="alex", help="LPIPS trunk (default alex)")
    parser.add_argument("--lpips-weights", type=Path, default=None,
                        help=f"directory of LPIPS safetensors weights (default: ${WEIGHTS_ENV}); without it LPIPS "
                             "is skipped")
    parser.add_argument("--plot", type=Path, default=None,
                        help="write per-frame curves to this .png (needs the [plot] extra)")
    parser.add_argument("--json", type=Path, default=None, help="write all metrics to this .json")
    parser.set_defaults(func=run, flags={"predicted": "--pred", "actual": "--actual", "plot": "--plot",
                                         "lpips_net": "--lpips-net"})
    return parser


def run(args: argparse.Namespace) -> int:
    """Print a summary of the comparison and optionally write JSON; typed errors propagate to the main CLI."""
    from ..video_io import atomic_output
    from .compare import verify
    result = verify(args.pred, args.actual, lpips_net=args.lpips_net, lpips_weights=args.lpips_weights,
                    plot=args.plot)
    print(result.summary())
    if args.plot is not None:
        print(f"plot:            {args.plot}")
    if args.json is not None:
        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        print(f"json:            {args.json}")
    return 0
