"""The counters and bookkeeping behind the benchmarks, against hand counts."""
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F

from foresight_engine.bench.flops import count, count_flops
from foresight_engine.bench.runner import Result, compare, speedups, targets
from foresight_engine.bench.stages import step_flops
from foresight_engine.bench.timeline import spans_of


class _Known(nn.Module):
    """linear 16->32 on 4 tokens, single-head attention over them, then a 3x3 conv on a 1x8x8x8 map."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(16, 32)
        self.conv = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x, image):
        h = self.linear(x)[None, None]  # [1, 1, 4, 32]
        return F.scaled_dot_product_attention(h, h, h), self.conv(image)


def test_flops_of_a_known_module_equal_the_hand_count():
    x, image = torch.randn(4, 16), torch.randn(1, 8, 8, 8)
    linear = 2 * 4 * 16 * 32
    attention = 2 * (2 * 4 * 4 * 32)  # q k^T and weights @ v
    conv = 2 * (8 * 3 * 3) * 4 * (8 * 8)  # per output element: 8*3*3 multiply-adds
    assert count_flops(_Known(), x, image) == linear + attention + conv


def test_traffic_counts_each_weight_once_and_activations_per_op():
    lin = nn.Linear(16, 32)
    x = torch.randn(4, 16)
    c, _ = count(lambda: lin(lin.weight.new_zeros(4, 16)) + lin(x))
    assert c.weight_elements == 16 * 32 + 32  # read once although used twice
    assert c.activation_elements == 2 * (4 * 16 + 4 * 32)
    assert c.largest_op_elements == 4 * 16 + 4 * 32


def test_step_flops_multiply_stages_by_their_calls():
    stages = dict(vision=1, prefill=10, decode_step=100, adapter=1000, denoise_step=10_000, vae=100_000)
    settings = dict(guidance_scale=1.0, num_inference_steps=4)
    assert step_flops(stages, settings, new_tokens=3) == 1 + 10 + 2 * 100 + 1000 + 4 * 10_000 + 100_000
    assert step_flops(stages, {**settings, "guidance_scale": 3.0}, 1) == 1 + 10 + 1000 + 8 * 10_000 + 100_000


def _e2e(name, role, median, lossless=True, psnr=None):
    return Result(f"end_to_end/{name}", "end_to_end", name, role, "fp32", "small", median, median, median, [median],
                  lossless=lossless, psnr_vs_reference=psnr)


def test_lossless_and_lossy_are_compared_apart_at_equal_quality():
    results = [_e2e("naive", "peer", 10.0, psnr=60), _e2e("best-peer", "peer", 4.0, psnr=50),
               _e2e("peer-cache-fast", "peer", 1.0, False, psnr=30),  # below 40 dB: not a fair peer
               _e2e("peer-cache", "peer", 2.5, False, psnr=45),
               _e2e("fast", "engine", 2.0, psnr=50), _e2e("cached", "engine", 1.0, False, psnr=41),
               _e2e("cached-blurry", "engine", 0.5, False, psnr=39)]
    vs_naive, vs_best = speedups(results, "naive"), speedups(results, "best-peer")
    assert vs_naive["fast"] == 5.0 and vs_best["fast"] == 2.0
    configs, best_lossless, best_lossy = compare(results)
    assert best_lossless["name"] == "fast" and best_lossless["speedup_vs_best_peer"] == 2.0
    assert configs["fast"]["speedup_vs_best_lossy_peer"] is None  # lossless rows are never held to lossy peers
    assert best_lossy["name"] == "cached" and best_lossy["best_lossy_peer"] == "peer-cache"
    assert best_lossy["speedup_vs_naive"] == 10.0 and best_lossy["speedup_vs_best_lossy_peer"] == 2.5
    met = {t["what"]: t["met"] for t in targets(results, best_lossless, best_lossy)}
    assert met == {"best lossless (fast) vs naive": True, "best lossless (fast) vs best-peer": True,
                   "best lossy >= 40 dB (cached) vs naive": True,
                   "best lossy >= 40 dB (cached) vs the best lossy peer (peer-cache)": True}
    assert speedups(results[1:], "naive") == {}
    tiny = [Result(**{**vars(r), "preset": "tiny"}) for r in results]
    assert targets(tiny, best_lossless, best_lossy) == []  # the targets are set for the small preset


def test_timeline_uses_spans_when_present_else_lays_stages_out_in_order():
    sequential = spans_of(SimpleNamespace(stages={"vision": 1.0, "text": 2.0}))
    assert [(s.lane, s.start, s.end) for s in sequential] == [("vision", 0.0, 1.0), ("text", 1.0, 3.0)]
    overlapped = spans_of(SimpleNamespace(stages={}, spans={"text": (11.0, 13.0), "denoise": (11.0, 14.0)}))
    assert [(s.lane, s.start, s.end) for s in overlapped] == [("text", 0.0, 2.0), ("denoise", 0.0, 3.0)]
    threaded = spans_of(SimpleNamespace(spans=[SimpleNamespace(stage="vae", start=5.0, end=6.0, thread="video")]))
    assert threaded[0].lane == "video: vae"


def test_family_split_of_an_ltx_block_adds_up_and_finds_norms_and_rope():
    """`plan --by-family` counts: every FLOP lands in a family, the block's norms and RoPE are found by context."""
    from diffusers.models.transformers.transformer_ltx import LTXVideoTransformerBlock
    block = LTXVideoTransformerBlock(dim=64, num_attention_heads=2, attention_head_dim=32, cross_attention_dim=64)
    h, text, temb = torch.randn(1, 24, 64), torch.randn(1, 5, 64), torch.randn(1, 1, 6 * 64)
    rope = (torch.randn(1, 24, 64), torch.randn(1, 24, 64))
    with torch.no_grad():
        counted, _ = count(block, h, text, temb, rope)
    families = counted.by_family
    assert sum(c.flops for c in families.values()) == counted.flops
    assert families["GEMMs"].flops > 0 and families["attention"].flops > 0
    assert families["norms/modulation"].activation_elements > 0  # inside the RMSNorm modules
    assert families["RoPE"].activation_elements > 0  # inside apply_rotary_emb
    linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
    assert families["GEMMs"].weight_elements == sum(p.numel() for m in linears for p in m.parameters())


def test_timeline_colours_a_stage_the_same_in_every_panel():
    from foresight_engine.bench.timeline import timeline_figure
    fig = timeline_figure({"a": SimpleNamespace(stages={"vision": 1.0, "denoise": 2.0}),
                           "b": SimpleNamespace(spans={"denoise": (0.0, 1.0), "text": (0.0, 0.5)})})
    colours = [{tuple(bar.get_facecolor()) for bar in ax.patches} for ax in fig.axes]
    (a_vision, a_denoise), (b_denoise, b_text) = ([tuple(p.get_facecolor()) for p in ax.patches] for ax in fig.axes)
    assert a_denoise == b_denoise and len({a_vision, a_denoise, b_text}) == 3 and all(colours)
