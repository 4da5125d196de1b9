"""Where a build's weights come from: a preset with a weight seed, or real weights from local folders."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..artifact import tensors_hash
from ..errors import ConfigError
from ..models.glp import GLPModel


@dataclass(frozen=True)
class ModelSource:
    """`preset` (+ `seed`) or all of `vlm`, `decoder`, `glue` (+ optional `lora`, and `spatial`: the hybrid
    encoder's DINOv2 folder)."""

    preset: str | None = None
    seed: int = 0
    vlm: Path | None = None
    decoder: Path | None = None
    glue: Path | None = None
    lora: Path | None = None
    spatial: Path | None = None

    def __post_init__(self) -> None:
        real = [self.vlm, self.decoder, self.glue]
        if any(real) and not all(real):
            raise ConfigError("real weights need all of vlm, decoder and glue; got "
                              f"vlm={self.vlm}, decoder={self.decoder}, glue={self.glue}")
        if any(real) == (self.preset is not None):
            raise ConfigError("give exactly one of a preset or real weights (vlm, decoder, glue)")

    def load(self) -> GLPModel:
        if self.preset is not None:
            return GLPModel.from_preset(self.preset, self.seed)
        return GLPModel.from_pretrained(self.vlm, self.decoder, self.glue, lora=self.lora, spatial=self.spatial)


def weights_hash(model: GLPModel) -> str:
    """Content hash of every component's fp32 source weights (any changed byte changes it)."""
    return tensors_hash((f"{name}.{k}", v) for name, module in model.components().items()
                        for k, v in module.state_dict().items())
