"""Strict safetensors loading: every tensor accounted for, by name, and never pickle."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import WeightsError


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of one `.safetensors` file; anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix != ".safetensors":
        raise WeightsError(f"only .safetensors weights are loaded (no pickle); got {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path)), metadata
    except Exception as exc:  # safetensors raises several types for a corrupt header
        raise WeightsError(f"cannot read {path}: {exc}") from exc


def load_strict(module: nn.Module, tensors: dict[str, torch.Tensor], what: str) -> set[str]:
    """Copy `tensors` into `module`; raise naming every missing, unexpected or mis-shaped tensor.

    Returns the names filled."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mis_shaped = sorted(f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
                        for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensor(s): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(unexpected)}")
    if mis_shaped:
        problems.append(f"wrong shape: {'; '.join(mis_shaped)}")
    if problems:
        raise WeightsError(f"{what}: " + " | ".join(problems))
    module.load_state_dict(tensors, strict=True)
    return set(tensors)


def check_loading_info(info: dict, what: str) -> None:
    """Turn transformers'/diffusers' `output_loading_info` into an error naming every unfilled tensor."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [str(m) for m in info.get("mismatched_keys") or []]
    if missing or mismatched:
        parts = [f"missing {len(missing)} tensor(s): {', '.join(missing)}"] if missing else []
        parts += [f"wrong shape: {'; '.join(mismatched)}"] if mismatched else []
        raise WeightsError(f"{what}: " + " | ".join(parts))


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=meta)
