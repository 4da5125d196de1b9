"""Where a server gets its engine: a built artifact directory, or a preset with seeded random weights."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class EngineSource:
    engine_dir: str | None = None  # `foresight-engine build --out DIR`
    preset: str | None = None  # tiny | small
    seed: int = 0  # weight seed of `preset`
    device: str | None = None  # cpu | cuda | cuda:N (None: the CPU)
    engine_kwargs: dict[str, Any] = field(default_factory=dict)  # Engine(...) options, e.g. max_queue_size

    def __post_init__(self) -> None:
        if (self.engine_dir is None) == (self.preset is None):
            raise ConfigError(f"give exactly one of engine_dir= or preset=, got engine_dir={self.engine_dir!r}, "
                              f"preset={self.preset!r}")

    def load(self):
        """The engine, built in this process (on a Ray replica: in the replica's process, on its GPU)."""
        from ..engine import Engine
        if self.preset is not None:
            return Engine.from_preset(self.preset, seed=self.seed, device=self.device, **self.engine_kwargs)
        return Engine.load(Path(self.engine_dir), device=self.device, **self.engine_kwargs)
