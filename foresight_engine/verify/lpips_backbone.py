"""LPIPS weights stored as safetensors and loaded with no download and no pickle.

Format: a directory holding, for `net` in {"alex", "vgg"}, two files:

* `<net>_backbone.safetensors`: the torchvision AlexNet / VGG16 `features` state dict, keys as in
  `torchvision.models.alexnet().features.state_dict()` ("0.weight", "0.bias", "3.weight", ...).
* `<net>_lin.safetensors`: the LPIPS v0.1 linear heads, keys as in the lpips wheel's `weights/v0.1/<net>.pth`
  ("lin0.model.1.weight" ... "lin4.model.1.weight", each [1, C, 1, 1]).

The directory is given by the `weights` argument or else the environment variable FORESIGHT_LPIPS_WEIGHTS.

Why lpips is not left to load itself: `lpips.LPIPS(pnet_rand=False)` builds its trunk with torchvision's
`pretrained=True`, which downloads ImageNet weights, and `LPIPS(pretrained=True)` `torch.load`s a pickle and
applies it with `load_state_dict(strict=False)`, which ignores missing tensors silently. Here the model is
built with `pretrained=False, pnet_rand=True` (random init: no download, no file read) and both state dicts
are loaded from safetensors with their names, shapes and values checked.

One-off conversion from checkpoints already on disk (nothing is downloaded):

    python -m foresight_engine.verify.lpips_backbone convert --net alex --out DIR \\
        [--torchvision-checkpoint PATH] [--lin-checkpoint PATH]

Defaults: the torchvision checkpoint where torchvision's own download leaves it in the torch hub cache (e.g.
~/.cache/torch/hub/checkpoints/alexnet-owt-7be5be79.pth), and the linear heads shipped inside the lpips wheel.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import lpips
import torch
import torchvision
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import InvalidInputError, WeightsError, WeightsMissingError
from ..video_io import atomic_output
from .lpips_names import LPIPS_NETS, WEIGHTS_ENV

logger = logging.getLogger(__name__)

# Smallest frame side for which every trunk slice still has >= 1 output pixel (probed on lpips 0.1.4).
MIN_SIDE = {"alex": 31, "vgg": 16}
CONVERT_COMMAND = "python -m foresight_engine.verify.lpips_backbone convert --net {net} --out DIR"
# The torchvision weights lpips would download for its trunk (`pretrained=True` means IMAGENET1K_V1).
_TORCHVISION_WEIGHTS = {
    "alex": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
    "vgg": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
}


@dataclass(frozen=True)
class LpipsWeights:
    """The two safetensors files that make up one LPIPS model."""

    net: str
    backbone: Path
    lin: Path


def check_net(net: str) -> str:
    """Return `net` if it is a supported LPIPS trunk, else raise `InvalidInputError` naming it."""
    if net not in LPIPS_NETS:
        raise InvalidInputError(f"lpips_net must be one of {LPIPS_NETS}, got {net!r}")
    return net


def weight_files(net: str, directory: str | os.PathLike[str]) -> LpipsWeights:
    """The file paths `<directory>/<net>_backbone.safetensors` and `<directory>/<net>_lin.safetensors`."""
    directory = Path(directory)
    return LpipsWeights(check_net(net), directory / f"{net}_backbone.safetensors", directory / f"{net}_lin.safetensors")


def locate_lpips_weights(net: str, weights: str | os.PathLike[str] | None = None) -> LpipsWeights:
    """Resolve `weights` (else $FORESIGHT_LPIPS_WEIGHTS) to the files for `net`.

    Raises `WeightsMissingError` saying which file was looked for and how to provide it.
    """
    check_net(net)
    how = (f"pass lpips_weights=DIR (CLI: --lpips-weights DIR) or set {WEIGHTS_ENV}=DIR; "
           f"create DIR once with `{CONVERT_COMMAND.format(net=net)}`")
    directory = weights if weights is not None else os.environ.get(WEIGHTS_ENV) or None
    if directory is None:
        raise WeightsMissingError(f"LPIPS weights not configured: need {net}_backbone.safetensors and "
                                  f"{net}_lin.safetensors in a directory: {how}")
    files = weight_files(net, directory)
    absent = [str(p) for p in (files.backbone, files.lin) if not p.is_file()]
    if absent:
        raise WeightsMissingError(f"LPIPS weights file(s) not found: {', '.join(absent)}: {how}")
    return files


def _blank_lpips(net: str) -> lpips.LPIPS:
    """LPIPS v0.1 with random trunk and heads: lpips reads no file and torchvision downloads nothing."""
    with warnings.catch_warnings():  # lpips calls torchvision with the deprecated `pretrained=` argument
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
        model = lpips.LPIPS(net=check_net(net), version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    return model.eval()


def _trunk_key(module_key: str) -> str:
    """lpips splits torchvision's `features` into `sliceN` blocks: "slice2.3.weight" -> "3.weight"."""
    return module_key.split(".", 1)[1]


def _lin_key(module_key: str) -> str:
    """`model.lins` entry "0.model.1.weight" -> "lin0.model.1.weight", the lpips .pth naming."""
    return f"lin{module_key}"


def _load_checked(module: torch.nn.Module, tensors: dict[str, torch.Tensor], key_of: Callable[[str], str],
                  source: str) -> None:
    """Load `tensors` (file keys) into `module` after checking names, shapes and finiteness; raise WeightsError."""
    target = module.state_dict()
    wanted = {key_of(k): k for k in target}  # file key -> module key
    missing, unexpected = sorted(set(wanted) - set(tensors)), sorted(set(tensors) - set(wanted))
    if missing or unexpected:
        raise WeightsError(f"{source}: missing tensors {missing}, unexpected tensors {unexpected}")
    wrong = [f"{k} {list(tensors[k].shape)} (expected {list(target[m].shape)})"
             for k, m in wanted.items() if tensors[k].shape != target[m].shape]
    if wrong:
        raise WeightsError(f"{source}: wrong tensor shapes: {', '.join(wrong)}")
    non_finite = [k for k in wanted if not torch.isfinite(tensors[k]).all()]
    if non_finite:
        raise WeightsError(f"{source}: non-finite values in tensors {non_finite}")
    module.load_state_dict({m: tensors[k].float() for k, m in wanted.items()}, strict=True)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"{path} is not a readable safetensors file: {err}") from err


def load_lpips(files: LpipsWeights) -> lpips.LPIPS:
    """Build LPIPS for `files.net` and load both safetensors files strictly; eval mode, on CPU."""
    model = _blank_lpips(files.net)
    _load_checked(model.net, _read_safetensors(files.backbone), _trunk_key, str(files.backbone))
    _load_checked(model.lins, _read_safetensors(files.lin), _lin_key, str(files.lin))
    logger.info("loaded LPIPS-%s from %s and %s", files.net, files.backbone, files.lin)
    return model


def save_lpips_weights(model: lpips.LPIPS, directory: str | os.PathLike[str]) -> LpipsWeights:
    """Write `model`'s trunk and linear heads in the format above (atomically); returns the two paths."""
    net = {"vgg16": "vgg"}.get(model.pnet_type, model.pnet_type)
    if net not in LPIPS_NETS or not model.lpips:
        raise InvalidInputError(f"can only save LPIPS ({LPIPS_NETS}) with linear heads, got net={model.pnet_type!r} "
                                f"lpips={model.lpips!r}")
    files = weight_files(net, directory)
    for path, module, key_of in ((files.backbone, model.net, _trunk_key), (files.lin, model.lins, _lin_key)):
        tensors = {key_of(k): v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        with atomic_output(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt", "net": net})
    return files


def _hub_checkpoint(net: str) -> Path:
    """Where torchvision's own download would have stored the trunk checkpoint (looked up, never fetched)."""
    name = Path(urlparse(_TORCHVISION_WEIGHTS[net].url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _where_to_get_trunk(net: str) -> str:
    """How to obtain torchvision's ImageNet trunk: its own download, run once on a machine with internet."""
    weights = _TORCHVISION_WEIGHTS[net]
    builder = {"alex": "alexnet", "vgg": "vgg16"}[net]
    return (f"It is torchvision's {builder} {weights.name} checkpoint ({weights.url}); on a machine with internet, "
            f"`python -c \"import torchvision; torchvision.models.{builder}(weights='{weights.name}')\"` downloads "
            f"it into the torch hub cache ({_hub_checkpoint(net).parent}), where this converter looks by default")


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    """A local .pth state dict, unpickled with `weights_only=True` (tensors and containers only)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # lpips' .pth files were saved from CUDA
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise WeightsError(f"{path} is not a loadable torch state dict: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a flat state dict of tensors")
    return state


def convert(net: str, out: str | os.PathLike[str], torchvision_checkpoint: str | os.PathLike[str] | None = None,
            lin_checkpoint: str | os.PathLike[str] | None = None) -> LpipsWeights:
    """Convert local torchvision + lpips .pth checkpoints into the safetensors directory `out`."""
    check_net(net)
    trunk_path = Path(torchvision_checkpoint) if torchvision_checkpoint else _hub_checkpoint(net)
    lin_path = Path(lin_checkpoint) if lin_checkpoint else Path(lpips.__file__).parent / f"weights/v0.1/{net}.pth"
    if not trunk_path.is_file():
        raise WeightsMissingError(f"checkpoint {str(trunk_path)!r} not found; give its location with "
                                  f"--torchvision-checkpoint. {_where_to_get_trunk(net)}")
    if not lin_path.is_file():
        raise WeightsMissingError(f"checkpoint {str(lin_path)!r} not found (the lpips wheel ships it); give its "
                                  "location with --lin-checkpoint")
    trunk = _torch_load(trunk_path)
    # A full torchvision model state dict prefixes the trunk with "features." (and adds the classifier).
    if any(k.startswith("features.") for k in trunk):
        trunk = {k.removeprefix("features."): v for k, v in trunk.items() if k.startswith("features.")}
    model = _blank_lpips(net)
    _load_checked(model.net, trunk, _trunk_key, str(trunk_path))
    _load_checked(model.lins, _torch_load(lin_path), _lin_key, str(lin_path))
    files = save_lpips_weights(model, out)
    logger.info("converted %s + %s -> %s, %s", trunk_path, lin_path, files.backbone, files.lin)
    return files


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m foresight_engine.verify.lpips_backbone convert ...`."""
    parser = argparse.ArgumentParser(prog="python -m foresight_engine.verify.lpips_backbone",
                                     description="Convert local LPIPS checkpoints to safetensors.")
    commands = parser.add_subparsers(dest="command", required=True)
    conv = commands.add_parser("convert", help="torchvision trunk + lpips heads (.pth, local) -> safetensors DIR")
    conv.add_argument("--net", choices=LPIPS_NETS, default="alex")
    conv.add_argument("--out", type=Path, required=True, help="output directory")
    conv.add_argument("--torchvision-checkpoint", type=Path, default=None,
                      help="torchvision AlexNet/VGG16 checkpoint (default: the torch hub cache file)")
    conv.add_argument("--lin-checkpoint", type=Path, default=None,
                      help="lpips linear heads (default: weights/v0.1/<net>.pth inside the lpips package)")
    args = parser.parse_args(argv)
    try:
        files = convert(args.net, args.out, args.torchvision_checkpoint, args.lin_checkpoint)
    except WeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {files.backbone}\nwrote {files.lin}\nuse: --lpips-weights {args.out} or {WEIGHTS_ENV}={args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
