"""The flags that say which model to run (a preset, a built artifact, or real weights) and where, shared by
`predict`, `ui` and `build`; cheap checks of them before anything loads; loading the engine they name."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ForesightError

if TYPE_CHECKING:
    from ..config import ModelConfig
    from ..engine import Engine

DEFAULT_PRESET = "tiny"  # what runs when no model flag is given
REAL_WEIGHTS = (("vlm", "--vlm"), ("decoder", "--decoder"), ("glue", "--glue"))
REAL_WEIGHTS_HINT = "--vlm QWEN2.5-VL_DIR --decoder LTX-VIDEO_DIR --glue GLUE.safetensors"


def add_model_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("model (a preset with seeded random weights, or real weights from local folders)")
    src.add_argument("--preset", default=None, help=f"tiny | small: seeded random weights (default {DEFAULT_PRESET}); "
                                                    "-hunyuan15 / -hybrid variants: HunyuanVideo-1.5 decoder / DINOv2 "
                                                    "hybrid encoder")
    src.add_argument("--seed-weights", type=int, default=0, help="weight seed for --preset (default 0)")
    src.add_argument("--vlm", type=Path, help="Qwen2.5-VL Hugging Face folder (model, tokenizer, processor)")
    src.add_argument("--decoder", type=Path, help="diffusers video decoder folder (transformer/, vae/, scheduler/): "
                                                  "LTX-Video or HunyuanVideo-1.5, told apart by its transformer")
    src.add_argument("--glue", type=Path, help="safetensors file with the query tokens and the adapter")
    src.add_argument("--lora", type=Path, help="optional LoRA of the decoder's transformer, fused at load")
    src.add_argument("--spatial", type=Path, help="DINOv2 folder: the hybrid encoder (with a glue file made with it)")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """The model flags, `--engine DIR` (a built artifact) and `--device`: what `predict` and `ui` run."""
    add_model_args(p)
    p.add_argument("--engine", type=Path, help="a built artifact directory (foresight-engine build) to run")
    add_device_arg(p, "where the engine runs")


def add_device_arg(p: argparse.ArgumentParser, what: str) -> None:
    """`--device`, shared by every command that runs or builds a model (checked by `device.resolve_device`)."""
    p.add_argument("--device", default="cpu", help=f"{what}: cpu | cuda | cuda:N (default cpu)")


def check_model_args(args: argparse.Namespace) -> ModelConfig | None:
    """Refuse contradictory or incomplete model flags before anything loads. Returns the model's config when it
    is known without loading anything (a preset; an artifact's manifest), else None (real weights)."""
    from ..config import ModelConfig, preset
    from ..device import resolve_device
    if getattr(args, "device", None) is not None:
        resolve_device(args.device)  # `--device cuda` without CUDA fails here, not after the weights load
    given = {flag: getattr(args, name) for name, flag in REAL_WEIGHTS}
    engine = getattr(args, "engine", None)
    chosen = [flag for flag, on in (("--engine", engine is not None), ("--preset", args.preset is not None),
                                    ("--vlm/--decoder/--glue", any(given.values()))) if on]
    if len(chosen) > 1:
        raise ForesightError(f"{' and '.join(chosen)} each choose the model: give one of them")
    if engine is not None:
        from ..artifact import read_manifest
        manifest = read_manifest(engine)  # "not an artifact directory" now; the files are verified at load
        return ModelConfig.from_dict(manifest.factors.config)
    if any(given.values()):
        missing = [flag for flag, path in given.items() if path is None]
        if missing:
            raise ForesightError(f"real weights need all of --vlm, --decoder and --glue; missing {', '.join(missing)}")
        for flag, path in [*given.items(), ("--lora", args.lora), ("--spatial", getattr(args, "spatial", None))]:
            if path is not None and not path.exists():
                raise ForesightError(f"{flag} {path}: no such file or directory")
        return None
    if getattr(args, "spatial", None) is not None:
        raise ForesightError("--spatial (a DINOv2 folder) goes with real weights (--vlm, --decoder, --glue); a "
                             "preset's hybrid encoder is its -hybrid variant")
    config = preset(args.preset or DEFAULT_PRESET)
    if not config.processor.tokenizer_vocab_size:  # the real model's shape: no seeded weights to run
        raise ForesightError(f"--preset {config.name} has no weights of its own (it is the real model's shape; "
                             f"`plan --preset {config.name}` projects it): give the real weights with "
                             f"{REAL_WEIGHTS_HINT}, or use --preset tiny or small")
    return config


def load_engine(args: argparse.Namespace, **engine_kwargs) -> Engine:
    """The engine the (checked) model flags name; `engine_kwargs` go to its constructor."""
    from ..engine import Engine
    engine_kwargs.setdefault("device", args.device)
    if args.engine is not None:
        return Engine.load(args.engine, **engine_kwargs)
    if args.vlm is not None:
        return Engine.from_pretrained(args.vlm, args.decoder, args.glue, lora=args.lora,
                                      spatial=getattr(args, "spatial", None), **engine_kwargs)
    return Engine.from_preset(args.preset or DEFAULT_PRESET, seed=args.seed_weights, **engine_kwargs)
