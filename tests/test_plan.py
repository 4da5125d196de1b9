"""`foresight-engine plan`: its JSON, and its LTX-2B denoising FLOPs against a count written by hand from the config."""
import contextlib
import io
import json

import pytest

from foresight_engine.bench.gpus import UnsupportedPrecisionError
from foresight_engine.bench.plan import PlanSettings, plan
from foresight_engine.cli import main
from foresight_engine.config import preset
from foresight_engine.errors import ConfigError


@pytest.fixture(scope="module")
def h100_fp8():
    """The CLI's JSON for the full preset on an H100 at FP8 (counted once for the module)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["plan", "--preset", "full", "--gpu", "h100", "--precision", "fp8", "--json"]) == 0
    return json.loads(printed.getvalue())


def ltx_forward_flops_by_hand(tokens: int, text_tokens: int) -> float:
    """Matmul FLOPs of one LTX-Video transformer forward (2 per multiply-add), from the config alone."""
    tr = preset("full").transformer
    d, c = tr.inner_dim, tr.caption_channels
    per_layer = (
        2 * tokens * d * 3 * d  # self-attention q, k, v projections
        + 2 * 2 * tokens * tokens * d  # self-attention scores q k^T and weights @ v
        + 2 * tokens * d * d  # self-attention output projection
        + 2 * tokens * d * d + 2 * text_tokens * d * 2 * d  # cross-attention q; k, v of the text
        + 2 * 2 * tokens * text_tokens * d  # cross-attention scores and weights @ v
        + 2 * tokens * d * d  # cross-attention output projection
        + 2 * tokens * d * 4 * d * 2  # feed-forward up and down (4x)
    )
    outer = 2 * tokens * tr.in_channels * d + 2 * tokens * d * tr.in_channels  # proj_in, proj_out
    caption = 2 * text_tokens * (c * d + d * d)  # caption projection (2-layer MLP)
    return tr.num_layers * per_layer + outer + caption


def test_plan_json_has_the_documented_keys(h100_fp8):
    assert {"stages", "projected_step_s", "gpu", "precision"} <= set(h100_fp8)
    assert h100_fp8["gpu"] == "h100" and h100_fp8["precision"] == "fp8"
    assert "PROJECTION" in h100_fp8["note"]
    names = [s["name"] for s in h100_fp8["stages"]]
    assert names == ["vision", "prefill", "text", "adapter", "denoise", "vae"]
    for stage in h100_fp8["stages"]:
        assert {"name", "flops", "bytes", "projected_s"} <= set(stage) and stage["projected_s"] > 0
    assert 0 < h100_fp8["projected_step_s"] <= h100_fp8["projected_sequential_s"]


def test_ltx_step_flops_match_a_hand_count(h100_fp8):
    denoise = next(s for s in h100_fp8["stages"] if s["name"] == "denoise")
    per_step = denoise["flops"] / denoise["calls"]
    latent = (121 - 1) // 8 + 1, 512 // 32, 768 // 32  # 16 x 16 x 24 = 6144 tokens
    by_hand = ltx_forward_flops_by_hand(latent[0] * latent[1] * latent[2], preset("full").adapter.num_tokens)
    assert 27e12 < by_hand < 31e12  # ~29 TFLOP, the published-config figure
    assert abs(per_step - by_hand) / by_hand < 0.15
    assert denoise["calls"] == 8


def test_a100_has_no_fp8_and_says_so():
    with pytest.raises(UnsupportedPrecisionError, match="A100.*fp8"):
        plan("full", "a100", "fp8")


def test_plan_rejects_frames_the_vae_cannot_make():
    with pytest.raises(ConfigError, match="num_frames=120"):
        plan("full", "h100", "bf16", PlanSettings(num_frames=120))


def test_plan_splits_each_stage_by_operator_family(h100_fp8):
    """`plan --by-family`: the denoiser's matmuls and attention are compute, its norms/RoPE/elementwise memory."""
    from foresight_engine.bench.op_families import FAMILIES
    families = h100_fp8["families"]
    assert set(families) <= set(FAMILIES)
    denoise = {f: stages.get("denoise", 0.0) for f, stages in families.items()}
    assert denoise["GEMMs"] > 0 and denoise["attention"] > 0 and denoise["norms/modulation"] > 0
    assert denoise["RoPE"] > 0 and families["VAE convolutions"]["vae"] > 0
