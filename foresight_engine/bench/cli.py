"""`foresight-engine bench` and `foresight-engine plan` subcommands (heavy imports inside the handlers)."""
from __future__ import annotations

import json
from pathlib import Path

from .gpus import GPUS
from .stages import STAGES


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v for v in value.split(",") if v)


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="latency suites: peers and engine configurations in one process",
                       description="Stage and end-to-end latency of the peers (naive, best-peer) and the engine's "
                                   "configurations on the same weights and inputs; prints a table.")
    p.add_argument("--preset", default="tiny", help="tiny | small (default tiny)")
    p.add_argument("--quick", action="store_true", help="fewer rounds (small finishes within ~10 min on 2 cores)")
    p.add_argument("--configs", type=_csv, default=None,
                   help="comma-separated configurations (default: all; see the table's names)")
    p.add_argument("--stages", type=_csv, default=STAGES,
                   help=f"comma-separated stage suites, empty for none (default {','.join(STAGES)})")
    p.add_argument("--json", type=Path, help="write the results as JSON here (per configuration: lossless, "
                                             "psnr_vs_reference, speedup_vs_naive, speedup_vs_best_peer; "
                                             "best_lossless, best_lossy)")
    p.add_argument("--markdown", type=Path, help="write the lossless and lossy tables as markdown here")
    p.add_argument("--readme", type=Path, help="splice the markdown tables into this file between "
                                               "<!-- bench:begin --> and <!-- bench:end -->")
    p.add_argument("--plot", type=Path, help="write a PNG timeline of each configuration's last step here "
                                             "(needs the [plot] extra)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N: where every contender runs (default cpu)")
    p.set_defaults(func=_bench, flags={"preset": "--preset", "device": "--device"})


def _bench(args) -> int:
    import shlex
    import sys

    from ..errors import ForesightError
    from ..plotting import require_matplotlib
    from ..video_io import atomic_output
    from .markdown import format_markdown, splice
    from .runner import SuiteOptions, format_table, run_suite
    from .timeline import plot_timelines
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        raise ForesightError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    if args.plot:
        require_matplotlib()  # before minutes of benchmarking, not after
    report = run_suite(SuiteOptions(args.preset, quick=args.quick, configs=args.configs, stages=args.stages,
                                    device=args.device))
    print(format_table(report))
    print(f"suite wall time: {report.wall_s:.1f} s")
    if args.json:
        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps(report.to_dict(), indent=2))
        print(f"json: {args.json}")
    if args.plot:
        plot_timelines(report.timelines, args.plot, f"one step, preset {args.preset}")
        print(f"plot: {args.plot}")
    if args.markdown or args.readme:
        markdown = format_markdown(report, "foresight-engine " + shlex.join(sys.argv[sys.argv.index("bench"):]
                                                                            if "bench" in sys.argv else ["bench"]))
        if args.markdown:
            with atomic_output(args.markdown) as tmp:
                tmp.write_text(markdown)
            print(f"markdown: {args.markdown}")
        if args.readme:
            splice(args.readme, markdown)
            print(f"tables spliced into {args.readme}")
    return 0


def add_plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="roofline PROJECTION of one step of a preset on a GPU (no weights needed)",
                       description="FLOPs and bytes per stage counted on the meta device, projected onto a GPU's "
                                   "datasheet peaks. A projection (a lower bound), not a measurement. Request "
                                   "settings default to the preset's own (full: 121 frames at 512x768, 8 steps).")
    p.add_argument("--preset", default="full", help="any preset (default full; full-hunyuan15, full-hybrid: the other families)")
    p.add_argument("--gpu", required=True, choices=sorted(GPUS))
    p.add_argument("--precision", default="bf16", choices=["fp8", "fp16", "bf16"])
    p.add_argument("--frames", type=int, help="frames (default: the preset's)")
    p.add_argument("--height", type=int, help="(default: the preset's)")
    p.add_argument("--width", type=int, help="(default: the preset's)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the preset's; full: the distilled 8)")
    p.add_argument("--new-tokens", type=int, help="answer tokens (default: the preset's max_new_tokens)")
    p.add_argument("--prompt-tokens", type=int, help="text tokens besides the image's (default 150)")
    p.add_argument("--guidance", type=float, help=">1 doubles the denoising batch (default: the preset's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--by-family", action="store_true",
                   help="also project each operator family (GEMMs, attention, norms, RoPE, ...) op by op")
    p.set_defaults(func=_plan, flags={"num_frames": "--frames", "height": "--height", "width": "--width",
                                      "steps": "--steps", "new_tokens": "--new-tokens",
                                      "prompt_tokens": "--prompt-tokens", "preset": "--preset"})


def _plan(args) -> int:
    from ..config import preset
    from .plan import PlanSettings, format_families, format_plan, plan
    settings = PlanSettings.for_config(preset(args.preset), height=args.height, width=args.width,
                                       num_frames=args.frames, steps=args.steps, new_tokens=args.new_tokens,
                                       prompt_tokens=args.prompt_tokens, guidance_scale=args.guidance)
    result = plan(args.preset, args.gpu, args.precision, settings)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_plan(result))
    if args.by_family and not args.json:
        print(format_families(result))
    return 0
