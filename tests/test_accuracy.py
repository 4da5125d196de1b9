"""Accuracy metrics and the build gate: known perturbations give known numbers."""
import json
import math

import numpy as np
import pytest
import torch

from foresight_engine.builders.accuracy import (
    AccuracyReport,
    AccuracyThresholds,
    ComponentAccuracy,
    check_gate,
    cosine,
    psnr,
    relative_l2,
    token_agreement,
)
from foresight_engine.errors import AccuracyGateError, ConfigError, InvalidInputError


def test_relative_l2_and_cosine_of_known_perturbations():
    ref = torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert relative_l2(ref * 1.01, ref) == pytest.approx(0.01, rel=1e-9)
    assert cosine(ref * 1.01, ref) == pytest.approx(1.0, abs=1e-12)  # scaling keeps the direction
    assert relative_l2(ref, ref) == 0.0
    # an orthogonal error of relative size e: cosine = 1 / sqrt(1 + e^2)
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([3.0, 0.3])
    assert relative_l2(b, a) == pytest.approx(0.1)
    assert cosine(b, a) == pytest.approx(1 / math.sqrt(1.01))
    assert cosine(-ref, ref) == pytest.approx(-1.0)
    assert relative_l2(np.ones(3), np.zeros(3)) == math.inf
    with pytest.raises(InvalidInputError, match=r"\(2, 3\)"):
        relative_l2(torch.zeros(2, 3), torch.zeros(3, 2))


def test_psnr_of_known_noise():
    frames = np.full((2, 8, 8, 3), 100, dtype=np.uint8)
    assert psnr(frames, frames) == math.inf
    shifted = frames + np.uint8(5)  # MSE 25 -> 10 log10(255^2 / 25)
    assert psnr(shifted, frames) == pytest.approx(10 * math.log10(255**2 / 25))
    assert psnr(torch.from_numpy(shifted), torch.from_numpy(frames)) == pytest.approx(34.151, abs=1e-3)
    with pytest.raises(InvalidInputError, match="uint8"):
        psnr(frames.astype(np.float32), frames)


def test_token_agreement_over_reference_length():
    assert token_agreement([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert token_agreement([1, 2, 9, 4], [1, 2, 3, 4]) == 0.75
    assert token_agreement([1, 2], [1, 2, 3, 4]) == 0.5  # missing positions disagree
    assert token_agreement([1, 2, 3, 4, 5], [1, 2, 3, 4]) == 1.0
    assert token_agreement([], []) == 1.0
    assert token_agreement([7], []) == 0.0


def _report(rel_l2: float, psnr_db: float | None = 50.0, agreement: float | None = 1.0) -> AccuracyReport:
    return AccuracyReport(
        "bf16",
        (ComponentAccuracy("adapter", 1e-3, 0.9999), ComponentAccuracy("transformer", rel_l2, 0.9999)),
        frame_psnr=psnr_db,
        token_agreement=agreement,
    )


def test_gate_passes_and_names_every_miss():
    check_gate(_report(0.01))  # bf16 defaults: rel L2 <= 2e-2
    with pytest.raises(AccuracyGateError) as exc:
        check_gate(_report(0.05, psnr_db=20.0, agreement=0.5))
    msg = str(exc.value)
    assert "transformer: relative_l2 0.05 > limit 0.02 (off by 0.03)" in msg
    assert "end-to-end: frame_psnr 20 < limit 35" in msg
    assert "token_agreement 0.5 < limit 0.9" in msg
    assert "adapter" not in msg and "3 missed" in msg
    # not measured -> not gated; per-component override; explicit thresholds
    check_gate(_report(0.01, psnr_db=None, agreement=None))
    check_gate(_report(0.05), per_component={"transformer": AccuracyThresholds.for_precision("fp8")})
    with pytest.raises(AccuracyGateError, match="adapter: relative_l2"):
        check_gate(_report(0.01), AccuracyThresholds(max_relative_l2=1e-4, min_cosine=0.9, min_frame_psnr=0,
                                                     min_token_agreement=0))
    with pytest.raises(ConfigError, match="vae"):
        check_gate(_report(0.01), per_component={"vae": AccuracyThresholds()})


def test_thresholds_per_precision_are_ordered_and_validated():
    t = {p: AccuracyThresholds.for_precision(p) for p in ("fp32", "fp16", "bf16", "fp8")}
    assert t["fp32"].max_relative_l2 == 1e-5 and t["bf16"].max_relative_l2 == 2e-2
    assert t["fp32"].max_relative_l2 < t["fp16"].max_relative_l2 < t["bf16"].max_relative_l2 < t["fp8"].max_relative_l2
    with pytest.raises(ConfigError, match="int4"):
        AccuracyThresholds.for_precision("int4")
    with pytest.raises(ConfigError, match="max_relative_l2"):
        AccuracyThresholds(max_relative_l2=-1.0)


def test_report_to_dict_is_strict_json_and_round_trips():
    report = AccuracyReport("fp8", (ComponentAccuracy("vae", 0.0, 1.0),), frame_psnr=math.inf, token_agreement=1.0)
    text = json.dumps(report.to_dict(), allow_nan=False)
    assert json.loads(text)["components"]["vae"] == {"relative_l2": 0.0, "cosine": 1.0}
    assert AccuracyReport.from_dict(json.loads(text)) == report
