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
    tr = preset("full").decoder.transformer
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


# ------------------------------------------------------------------ the GPU projection (bench/projection.py)
def test_overlap_on_one_gpu_is_bounded_by_summed_compute_and_memory():
    """Two branches on one GPU share its tensor cores and its bandwidth: the overlapped part takes at least the
    sum of every compute time and the sum of every memory time (and each branch's own time), not max(branches)."""
    from foresight_engine.bench.projection import StageTime, step_seconds

    def stage(name, compute, memory):
        return StageTime(name, "fp8", 0.0, 0.0, 0.0, compute, memory)
    times = {"vision": stage("vision", 1, 0), "prefill": stage("prefill", 2, 1),
             "text": stage("text", 10, 100),  # memory-bound decode
             "adapter": stage("adapter", 0, 0), "denoise": stage("denoise", 120, 20), "vae": stage("vae", 10, 5)}
    step = step_seconds(times)
    assert step["sequential_s"] == 1 + 2 + 100 + 0 + 120 + 10
    # max(branches) would say 3 + max(100, 130) = 133; the GPU must still do 140 of compute and 125 of memory
    assert step["overlap_compute_s"] == 140 and step["overlap_memory_s"] == 125
    assert step["overlapped_s"] == 3 + 140


def test_attention_stays_16_bit_and_the_vision_tower_follows_the_policy(h100_fp8):
    from foresight_engine.bench.gpus import gpu
    from foresight_engine.bench.projection import IDEAL, stage_time
    h100 = gpu("h100")
    linears = stage_time("denoise", "transformer", 1, 1e12, 0.0, 0.0, h100, "fp8", IDEAL)
    attention = stage_time("denoise", "transformer", 1, 0.0, 1e12, 0.0, h100, "fp8", IDEAL)
    assert linears.compute_s == pytest.approx(1 / 1979) and attention.compute_s == pytest.approx(1 / 989)
    precisions = {s["name"]: s["precision"] for s in h100_fp8["stages"]}
    assert precisions == {"vision": "bf16", "prefill": "fp8", "text": "fp8", "adapter": "bf16", "denoise": "fp8",
                          "vae": "bf16"}  # PrecisionPolicy.for_precision("fp8")
    ideal = h100_fp8["extra"]["projection"]["ideal"]
    assert h100_fp8["projected_step_s"] == pytest.approx(ideal["overlapped_s"])
    assert h100_fp8["projected_step_s"] >= ideal["text_branch_s"] + ideal["stages"]["prefill"]["seconds"]
    assert h100_fp8["projected_step_s"] < h100_fp8["realistic_step_s"] < h100_fp8["realistic_sequential_s"]
    assert set(h100_fp8["extra"]["projection"]["realistic"]["efficiency"]["sources"]) == {"gemm", "attention",
                                                                                       "bandwidth"}


def test_h100_pcie_is_planned_from_its_own_datasheet():
    from foresight_engine.bench.gpus import gpu
    pcie, sxm = gpu("h100-pcie"), gpu("h100")
    assert pcie.peak_flops("fp8") < sxm.peak_flops("fp8") and pcie.bandwidth == 2.0e12


def hunyuan_forward_flops_by_hand(tokens: int, text_tokens: int) -> float:
    """Matmul FLOPs of one HunyuanVideo-1.5 forward: per dual-stream block, each stream's q, k, v, output and 4x
    feed-forward projections (24 D^2 per token) and one joint attention over video + text tokens."""
    tr = preset("full-hunyuan15").decoder.transformer
    d, n = tr.inner_dim, tokens + text_tokens
    per_layer = 2 * 12 * n * d * d + 2 * 2 * n * n * d
    return tr.num_layers * per_layer


@pytest.fixture(scope="module")
def hunyuan_h100_fp8():
    """The CLI's JSON for the full HunyuanVideo-1.5 preset on an H100 at FP8 (its own generation defaults)."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["plan", "--preset", "full-hunyuan15", "--gpu", "h100", "--precision", "fp8", "--json"]) == 0
    return json.loads(printed.getvalue())


def test_hunyuan_step_flops_match_a_hand_count(hunyuan_h100_fp8):
    """The plan counts the family's own `denoise` stage (what builders export): one full-size HunyuanVideo-1.5 step
    at 480x848, 121 frames, 8 steps (the preset's defaults, not LTX's)."""
    s = hunyuan_h100_fp8["settings"]
    assert (s["height"], s["width"], s["num_frames"], s["steps"]) == (480, 848, 121, 8)
    denoise = next(st for st in hunyuan_h100_fp8["stages"] if st["name"] == "denoise")
    per_step = denoise["flops"] / denoise["calls"]
    tokens = ((121 - 1) // 4 + 1) * (480 // 16) * (848 // 16)  # 31 x 30 x 53 = 49290
    by_hand = hunyuan_forward_flops_by_hand(tokens, preset("full-hunyuan15").adapter.num_tokens)
    assert 1.3e15 < by_hand < 1.4e15  # ~1.35 PFLOP per step, ~80% of it in attention
    assert abs(per_step - by_hand) / by_hand < 0.05


def test_hunyuan_plan_sits_beside_the_published_figure(hunyuan_h100_fp8):
    """The datasheet comparison: the same counts projected on the GPU and precision of the quoted ~75 s (RTX 4090,
    bf16), and the table line that says how the quote compares with that lower bound."""
    from foresight_engine.bench.gpus import gpu
    from foresight_engine.bench.plan import Plan, StagePlan, format_plan
    f = hunyuan_h100_fp8["extra"]["published"]
    assert (f["gpu"], f["precision"], f["seconds"]) == ("rtx4090", "bf16", 75.0)
    denoise = next(st for st in hunyuan_h100_fp8["stages"] if st["name"] == "denoise")
    assert f["projected_video_s"] >= denoise["flops"] / gpu("rtx4090").peak_flops("bf16")  # at least the compute
    assert f["projected_video_s"] <= f["projected_step_s"] and f["fits_in_memory"] is False  # 24 GB < the weights
    fields = {**hunyuan_h100_fp8, "stages": [StagePlan(**st) for st in hunyuan_h100_fp8["stages"]]}
    assert "published: ~75 s per clip on rtx4090 at bf16" in format_plan(Plan(**fields))


def test_hybrid_plan_counts_dinov2_beside_the_prefill():
    # a short clip keeps the count quick; DINOv2's cost does not depend on the video
    p = plan("full-hybrid", "h100", "bf16", PlanSettings(height=256, width=256, num_frames=9, new_tokens=2))
    assert [s.name for s in p.stages][:3] == ["vision", "spatial", "prefill"]
    dinov2 = next(s for s in p.stages if s.name == "spatial")
    assert dinov2.calls == 1 and 0.15e12 < dinov2.flops < 0.17e12  # ViT-L/14 on 257 tokens: ~2 x 304M x 257 + attn
    ms = {s.name: s.projected_s for s in p.stages}
    # one GPU: DINOv2 and the prefill are both compute work, so its time adds to the front (no free overlap)
    front = ms["vision"] + ms["spatial"] + ms["prefill"]
    assert p.projected_step_s >= front + max(ms["text"], ms["adapter"] + ms["denoise"] + ms["vae"])


def test_plan_splits_each_stage_by_operator_family(h100_fp8):
    """`plan --by-family`: the denoiser's matmuls and attention are compute, its norms/RoPE/elementwise memory."""
    from foresight_engine.bench.op_families import FAMILIES
    families = h100_fp8["families"]
    assert set(families) <= set(FAMILIES)
    denoise = {f: stages.get("denoise", 0.0) for f, stages in families.items()}
    assert denoise["GEMMs"] > 0 and denoise["attention"] > 0 and denoise["norms/modulation"] > 0
    assert denoise["RoPE"] > 0 and families["VAE convolutions"]["vae"] > 0
