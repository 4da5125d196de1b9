"""Accuracy of an optimized build against the eager fp32 reference, and the gate that fails a build.

Metrics (all computed in float64, argument order is always ``(actual, reference)``):

- ``relative_l2(actual, reference)`` = ||actual - reference||_2 / ||reference||_2 over all elements
  (0.0 when both are zero, inf when only the reference is zero).
- ``cosine(actual, reference)`` = <a, r> / (||a|| ||r||) over all elements (1.0 when both are zero, 0.0 when one is).
- ``psnr(frames, reference_frames)``: uint8 video, data range 255, 10*log10(255^2 / MSE); identical -> inf.
- ``token_agreement(tokens, reference_tokens)``: fraction of the reference's positions whose token is equal
  (a shorter answer counts its missing positions as disagreements; tokens past the reference's end are ignored).

``AccuracyReport`` gathers per-component ``ComponentAccuracy`` (rel L2 + cosine) and the end-to-end frame PSNR and
token agreement (``None`` = not measured, and then not gated). ``check_gate(report, thresholds)`` raises
``AccuracyGateError`` naming every component/metric that missed, its value, its limit and the margin.

Default thresholds per precision (``AccuracyThresholds.for_precision``), for one component's output:

- fp32: rel L2 <= 1e-5 (reordered fp32 sums), cosine >= 1 - 1e-9.
- fp16: rel L2 <= 5e-3 (10-bit mantissa: unit roundoff 4.9e-4, ~10x headroom for accumulation over layers).
- bf16: rel L2 <= 2e-2 (7-bit mantissa: unit roundoff 3.9e-3; measured ~1e-2 on the LTX transformer here).
- fp8:  rel L2 <= 1.5e-1. e4m3 keeps 3 mantissa bits: one quantize-dequantize has a relative rounding error of up
  to 2^-4 = 6.25% (RMS ~3.6%), both the activation and the weight of every Linear are rounded, and the error
  compounds through the layers. Measured with per-tensor scales (``calibrate`` + ``measure_simulation_accuracy``):
  4.1-5.1% on one tiny-preset LTX transformer step, 5.4-5.5% on the small preset (cosine >= 0.9985), 5.5% on the
  tiny adapter. 15% leaves ~3x headroom for deeper stacks and still catches a wrong scale (values pushed into
  saturation or subnormals). Cosine >= 0.99 (an error of relative size e leaves cosine >= sqrt(1 - e^2) = 0.989
  at e = 0.15, so the cosine limit matters only for errors that are not small).

End-to-end defaults (frames through the whole diffusion loop + VAE, greedy text): PSNR >= 60/40/35/20 dB and token
agreement >= 1.0/0.9/0.9/0.75 for fp32/fp16/bf16/fp8. Lower precisions can flip a near-tie greedy token, after which
the continuation legitimately differs, hence < 1.0. Every threshold is a field: pass your own to tighten or relax.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch

from ..errors import AccuracyGateError, ConfigError, InvalidInputError
from ..verify.metrics import psnr_from_mse

PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8")


def _as_tensor(x: torch.Tensor | np.ndarray, what: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if isinstance(x, torch.Tensor):
        return x.detach()
    raise InvalidInputError(f"{what} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def _pair(actual, reference) -> tuple[torch.Tensor, torch.Tensor]:
    """Both flattened to float64 on the CPU, after checking that their shapes match."""
    a, r = _as_tensor(actual, "actual"), _as_tensor(reference, "reference")
    if a.shape != r.shape:
        raise InvalidInputError(f"shape mismatch: actual {tuple(a.shape)} vs reference {tuple(r.shape)}")
    return a.to("cpu", torch.float64).reshape(-1), r.to("cpu", torch.float64).reshape(-1)


def relative_l2(actual: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray) -> float:
    """||actual - reference|| / ||reference|| over all elements, in float64."""
    a, r = _pair(actual, reference)
    diff = torch.linalg.vector_norm(a - r).item()
    ref = torch.linalg.vector_norm(r).item()
    if ref == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / ref


def cosine(actual: torch.Tensor | np.ndarray, reference: torch.Tensor | np.ndarray) -> float:
    """Cosine similarity of the flattened tensors, in float64."""
    a, r = _pair(actual, reference)
    na, nr = torch.linalg.vector_norm(a).item(), torch.linalg.vector_norm(r).item()
    if na == 0.0 or nr == 0.0:
        return 1.0 if na == nr else 0.0
    return float(torch.dot(a, r).item() / (na * nr))


def psnr(frames: np.ndarray | torch.Tensor, reference_frames: np.ndarray | torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of uint8 frames (data range 255); identical frames -> inf."""
    for what, f in (("frames", frames), ("reference_frames", reference_frames)):
        dtype = _as_tensor(f, what).dtype
        if dtype != torch.uint8:
            raise InvalidInputError(f"{what} must be uint8 video frames, got dtype {dtype}")
    a, r = _pair(frames, reference_frames)
    return psnr_from_mse(torch.mean((a - r) ** 2).item())  # over the whole clip, not a mean of per-frame PSNRs


def token_agreement(tokens: Sequence[int], reference_tokens: Sequence[int]) -> float:
    """Fraction of the reference's positions where ``tokens`` has the same id (1.0 when both are empty)."""
    tokens, reference_tokens = list(tokens), list(reference_tokens)
    if not reference_tokens:
        return 1.0 if not tokens else 0.0
    equal = sum(1 for a, r in zip(tokens, reference_tokens) if a == r)
    return equal / len(reference_tokens)


@dataclass(frozen=True)
class ComponentAccuracy:
    """One component's output against eager fp32."""

    name: str
    relative_l2: float
    cosine: float

    @classmethod
    def measure(cls, name: str, actual: torch.Tensor, reference: torch.Tensor) -> ComponentAccuracy:
        return cls(name, relative_l2(actual, reference), cosine(actual, reference))


def _json_float(x: float | None) -> float | str | None:
    # strict JSON has no inf/nan: write them as strings, read them back with float()
    return x if x is None or math.isfinite(x) else str(x)


@dataclass(frozen=True)
class AccuracyReport:
    """Per-component errors plus end-to-end frame PSNR (dB) and token agreement (None = not measured)."""

    precision: str
    components: tuple[ComponentAccuracy, ...] = ()
    frame_psnr: float | None = None
    token_agreement: float | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision {self.precision!r} is not one of {PRECISIONS}")
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ConfigError(f"duplicate component names in accuracy report: {names}")
        object.__setattr__(self, "components", tuple(self.components))

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "components": {
                c.name: {"relative_l2": _json_float(c.relative_l2), "cosine": _json_float(c.cosine)}
                for c in self.components
            },
            "frame_psnr": _json_float(self.frame_psnr),
            "token_agreement": _json_float(self.token_agreement),
        }

    def table(self) -> str:
        """The report as an aligned text table: one row per stage, then the end-to-end row."""
        def num(x: float | None, spec: str) -> str:
            return "-" if x is None else format(x, spec)

        rows = [("stage", "rel L2", "cosine"), *((c.name, num(c.relative_l2, ".3g"), num(c.cosine, ".6f"))
                                                 for c in self.components)]
        width = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"{r[0]:<{width[0]}}  {r[1]:>{width[1]}}  {r[2]:>{width[2]}}" for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        lines.append(f"end to end ({self.precision}): frame PSNR {num(self.frame_psnr, '.2f')} dB, "
                     f"token agreement {num(self.token_agreement, '.3f')}")
        return "\n".join(lines)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AccuracyReport:
        def num(x):
            return None if x is None else float(x)

        comps = tuple(
            ComponentAccuracy(name, float(m["relative_l2"]), float(m["cosine"])) for name, m in d["components"].items()
        )
        return cls(d["precision"], comps, num(d.get("frame_psnr")), num(d.get("token_agreement")))


# precision -> (max rel L2, min cosine, min PSNR dB, min token agreement); the module docstring says why.
_DEFAULTS = {
    "fp32": (1e-5, 1.0 - 1e-9, 60.0, 1.0),
    "fp16": (5e-3, 0.9999, 40.0, 0.9),
    "bf16": (2e-2, 0.999, 35.0, 0.9),
    "fp8": (1.5e-1, 0.99, 20.0, 0.75),
    "int8": (1e-1, 0.995, 25.0, 0.75),
}


@dataclass(frozen=True)
class AccuracyThresholds:
    """Limits one build must meet; defaults are fp32's, use ``for_precision`` for the others."""

    max_relative_l2: float = _DEFAULTS["fp32"][0]
    min_cosine: float = _DEFAULTS["fp32"][1]
    min_frame_psnr: float = _DEFAULTS["fp32"][2]
    min_token_agreement: float = _DEFAULTS["fp32"][3]

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or math.isnan(v):
                raise ConfigError(f"AccuracyThresholds.{f.name} must be a number, got {v!r}")
        if self.max_relative_l2 < 0:
            raise ConfigError(f"AccuracyThresholds.max_relative_l2 must be >= 0, got {self.max_relative_l2}")
        for name in ("min_cosine", "min_token_agreement"):
            v = getattr(self, name)
            if not -1.0 <= v <= 1.0:
                raise ConfigError(f"AccuracyThresholds.{name} must be in [-1, 1], got {v}")

    @classmethod
    def for_precision(cls, precision: str) -> AccuracyThresholds:
        if precision not in _DEFAULTS:
            raise ConfigError(f"precision {precision!r} is not one of {PRECISIONS}")
        return cls(*_DEFAULTS[precision])

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _misses(scope: str, checks) -> list[str]:
    out = []
    for metric, value, limit, is_max in checks:
        if value is None:
            continue
        missed = value > limit if is_max else value < limit
        if missed or math.isnan(value):
            op = ">" if is_max else "<"
            out.append(f"{scope}: {metric} {value:.6g} {op} limit {limit:.6g} (off by {abs(value - limit):.3g})")
    return out


def gate_failures(
    report: AccuracyReport,
    thresholds: AccuracyThresholds,
    per_component: Mapping[str, AccuracyThresholds] | None = None,
) -> list[str]:
    """Every missed threshold as one line (empty when the report passes)."""
    per_component = per_component or {}
    unknown = set(per_component) - {c.name for c in report.components}
    if unknown:
        raise ConfigError(f"per-component thresholds for components not in the report: {sorted(unknown)}")
    lines = []
    for c in report.components:
        t = per_component.get(c.name, thresholds)
        lines += _misses(c.name, [("relative_l2", c.relative_l2, t.max_relative_l2, True),
                                  ("cosine", c.cosine, t.min_cosine, False)])
    lines += _misses("end-to-end", [("frame_psnr", report.frame_psnr, thresholds.min_frame_psnr, False),
                                    ("token_agreement", report.token_agreement, thresholds.min_token_agreement, False)])
    return lines


def check_gate(
    report: AccuracyReport,
    thresholds: AccuracyThresholds | None = None,
    *,
    per_component: Mapping[str, AccuracyThresholds] | None = None,
) -> None:
    """Raise ``AccuracyGateError`` listing every miss; ``thresholds`` defaults to the report's precision's.

    ``per_component`` overrides the component thresholds by name (e.g. a VAE kept in bf16 inside an fp8 build);
    the end-to-end metrics always use ``thresholds``. Metrics that are ``None`` were not measured and are not gated.
    """
    thresholds = thresholds or AccuracyThresholds.for_precision(report.precision)
    lines = gate_failures(report, thresholds, per_component)
    if lines:
        raise AccuracyGateError(
            f"accuracy gate failed for the {report.precision} build ({len(lines)} missed; "
            "--no-gate skips the gate):\n  "
            + "\n  ".join(lines)
        )
