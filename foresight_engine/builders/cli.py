"""`foresight-engine build` and `foresight-engine inspect` (registered by `foresight_engine/cli/__init__.py`)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli.model_args import DEFAULT_PRESET, add_model_args, check_model_args

# The names of `backends.Backend` and `precision.Precision`, spelled out: those modules import torch, and the
# parser must not (`--help` answers without it). tests/test_cli.py keeps these equal to the enums.
BACKENDS = ("eager", "compile", "onnx", "tensorrt")
PRECISIONS = ("fp32", "bf16", "fp16", "fp8")


def add_parsers(sub) -> None:
    p = sub.add_parser("build", help=f"build an optimized artifact ({' | '.join(BACKENDS)}) for Engine.load",
                       description="Build every component into DIR (manifest.json + one folder per component). "
                                   "A second build with the same key is a cache hit and does nothing.")
    add_model_args(p)
    p.add_argument("--backend", choices=BACKENDS, default="eager")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--out", type=Path, required=True, help="artifact directory")
    p.add_argument("--frames", type=int, help="frames the denoising step and VAE are built for")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int, help="denoising steps of the end-to-end accuracy probes")
    p.add_argument("--guidance", action="store_true", help="build the denoising step for classifier-free guidance")
    p.add_argument("--image-size", type=_size, metavar="HxW",
                   help="input images the vision stage is built for (default: the video's size)")
    p.add_argument("--prompt-tokens", type=int,
                   help="typical prompt length, images included: the prefill's TensorRT `opt` shape (default: one "
                        "image of --image-size + a one-sentence prompt)")
    p.add_argument("--calib", action="append", default=[], metavar="IMAGE:PROMPT",
                   help="FP8 calibration request (repeat); default: the accuracy probes' requests")
    p.add_argument("--fp8-calibrator", choices=["auto", "modelopt", "max"], default="auto",
                   help="FP8 calibration: NVIDIA ModelOpt (auto: where installed) or the project's max calibrator")
    p.add_argument("--fp8-kv-cache", action="store_true",
                   help="FP8: keys/values read by the backbone's attention in e4m3 (onnx/tensorrt; gated)")
    p.add_argument("--fp8-attention", action="store_true",
                   help="FP8: attention (q, k, v, softmax) in e4m3 in the fp8 components (onnx/tensorrt; gated)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--stages", help="comma-separated stages the backend builds (default: all it can); "
                                    "vision, spatial (hybrid encoder), prefill, decode, adapter, denoise, "
                                    "vae_decode")
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan and the cache hit/miss; build nothing")
    p.add_argument("--no-gate", action="store_true", help="build even when the accuracy gate fails (still reported)")
    p.add_argument("--max-rel-l2", type=float, help="accuracy gate: max relative L2 per stage (default: per precision)")
    p.add_argument("--min-psnr", type=float, help="accuracy gate: min end-to-end frame PSNR in dB")
    p.set_defaults(func=_build, flags={"num_frames": "--frames", "height": "--height", "width": "--width",
                                       "num_inference_steps": "--steps", "directory": "--out",
                                       "preset": "--preset", "device": "--device"})

    p = sub.add_parser("inspect", help="print an artifact's manifest readably (and whether it verifies here)")
    p.add_argument("directory", type=Path)
    p.add_argument("--json", action="store_true", help="print the raw manifest")
    p.set_defaults(func=_inspect)


def _size(text: str) -> tuple[int, int]:
    height, sep, width = text.lower().partition("x")
    if not sep or not height.isdigit() or not width.isdigit() or int(height) < 1 or int(width) < 1:
        raise argparse.ArgumentTypeError(f"--image-size {text!r} must be HxW in pixels, e.g. 512x768")
    return int(height), int(width)


def _thresholds(args, precision: str):
    from .accuracy import AccuracyThresholds
    if args.max_rel_l2 is None and args.min_psnr is None:
        return None
    base = AccuracyThresholds.for_precision(precision)
    return AccuracyThresholds(max_relative_l2=args.max_rel_l2 if args.max_rel_l2 is not None else base.max_relative_l2,
                              min_cosine=base.min_cosine,
                              min_frame_psnr=args.min_psnr if args.min_psnr is not None else base.min_frame_psnr,
                              min_token_agreement=base.min_token_agreement)


def _build(args) -> int:
    from ..models.export_spec import BuildShape
    from .build import build, check_backend_available
    from .calibration import CalibrationSample
    from .source import ModelSource

    check_backend_available(args.backend, args.device)  # before loading anything
    config = check_model_args(args)
    if config is not None:  # a preset: its shape is checked before the model is built
        BuildShape.for_config(config, args.height, args.width, args.frames, image_size=args.image_size,
                              prompt_tokens=args.prompt_tokens)
    real = any([args.vlm, args.decoder, args.glue])
    source = ModelSource(preset=None if real else (args.preset or DEFAULT_PRESET), seed=args.seed_weights,
                         vlm=args.vlm, decoder=args.decoder, glue=args.glue, lora=args.lora,
                         spatial=args.spatial)
    model = source.load()
    shape = BuildShape.for_config(model.config, args.height, args.width, args.frames, image_size=args.image_size,
                                  prompt_tokens=args.prompt_tokens)
    if args.guidance:
        shape = BuildShape(**{**shape.to_dict(), "guidance": True})
    result = build(model, args.out, backend=args.backend, precision=args.precision, shape=shape, steps=args.steps,
                   calibration=[CalibrationSample.parse(c) for c in args.calib] or None, gate=not args.no_gate,
                   thresholds=_thresholds(args, args.precision), device=args.device, dry_run=args.dry_run,
                   stages=tuple(args.stages.split(",")) if args.stages else None,
                   fp8_calibrator=args.fp8_calibrator, fp8_kv_cache=args.fp8_kv_cache,
                   fp8_attention=args.fp8_attention, progress=True)
    if args.dry_run:
        print(result.plan.describe(cache_hit=result.cache_hit))
        return 0
    print(f"{'cache hit' if result.cache_hit else 'built'}: {result.directory} (key {result.key[:16]}, "
          f"{result.seconds:.1f}s)")
    if result.accuracy is not None:
        print(result.accuracy.table())
    return 0


def _inspect(args) -> int:
    from ..artifact import describe, read_manifest, verify
    from ..errors import ArtifactError
    from .accuracy import AccuracyReport
    manifest = read_manifest(args.directory)
    if args.json:
        print(json.dumps(manifest.to_dict(), indent=2))
        return 0
    print(describe(manifest))
    if "accuracy" in manifest.report:
        print("  accuracy against eager fp32 (the build's gate):")
        print("\n".join("    " + line for line in AccuracyReport.from_dict(manifest.report["accuracy"]).table()
                                                      .splitlines()))
    try:
        verify(args.directory)
        print("  verifies here: yes")
    except ArtifactError as exc:
        print(f"  verifies here: no ({exc})")
    return 0
