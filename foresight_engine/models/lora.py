"""Fuse a LoRA of the LTX transformer into its weights at load time: W <- W + scale * (alpha / r) * B @ A.

Accepted layouts (safetensors only):
- a peft folder: `adapter_model.safetensors` + `adapter_config.json` (`r`, `lora_alpha`), keys
  `base_model.model.<module>.lora_A.weight`;
- a diffusers file (`save_lora_weights`): keys `transformer.<module>.lora_A.weight`, alpha from the header's
  `lora_adapter_metadata` or from `<module>.alpha` tensors, else alpha = r.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import WeightsError
from .weights import read_safetensors

_PREFIXES = ("base_model.model.", "transformer.")


def _strip(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    if path.is_dir():
        tensors, _ = read_safetensors(path / "adapter_model.safetensors")
        config_file = path / "adapter_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        return tensors, config
    tensors, metadata = read_safetensors(path)
    config = json.loads(metadata["lora_adapter_metadata"]) if "lora_adapter_metadata" in metadata else {}
    return tensors, config


@torch.no_grad()
def fuse_lora(model: nn.Module, path: str | Path, scale: float = 1.0) -> list[str]:
    """Fuse the LoRA at `path` into `model` in place; returns the fused module names.

    Raises naming every target module the model lacks and every A/B pair that is incomplete or mis-shaped."""
    tensors, config = _read(Path(path))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name = _strip(key)
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in name:
                pairs.setdefault(name.split(marker)[0], {})[part] = value
        if name.endswith(".alpha"):
            pairs.setdefault(name[: -len(".alpha")], {})["alpha"] = value
    if not pairs:
        raise WeightsError(f"{path}: no lora_A/lora_B tensors found")
    modules = dict(model.named_modules())
    problems = []
    for target, parts in sorted(pairs.items()):
        module = modules.get(target)
        if not isinstance(module, nn.Linear):
            problems.append(f"{target}: no such Linear in the model")
        elif "lora_A" not in parts or "lora_B" not in parts:
            problems.append(f"{target}: needs both lora_A and lora_B")
        elif (parts["lora_B"].shape[0], parts["lora_A"].shape[1]) != tuple(module.weight.shape):
            problems.append(f"{target}: B@A is {(parts['lora_B'].shape[0], parts['lora_A'].shape[1])}, "
                            f"weight is {tuple(module.weight.shape)}")
    if problems:
        raise WeightsError(f"LoRA {path}: " + "; ".join(problems))
    for target, parts in sorted(pairs.items()):
        weight = modules[target].weight
        rank = parts["lora_A"].shape[0]
        alpha = float(parts["alpha"]) if "alpha" in parts else float(config.get("lora_alpha", rank))
        delta = parts["lora_B"].float() @ parts["lora_A"].float()  # [out, in]
        weight.copy_((weight.float() + scale * alpha / rank * delta).to(weight.dtype))
    return sorted(pairs)
