"""Kernel bench: every custom op of `foresight_engine.kernels` against its plain-PyTorch reference, against what
torch.compile (inductor) makes of that reference, and against the model code it replaces, on the small and full
presets' shapes (bf16, the fastest lossless precision). Contenders are timed round-robin in one process (round 1
of each, round 2 of each, ...) so a shared machine's drift lands on all of them; medians and ratios are reported.

    OMP_NUM_THREADS=2 python -m pytest bench/test_kernels.py -q -s -p no:cacheprovider   # table at the end

Full-preset attention runs 4 of the LTX transformer's 32 heads (time is linear in heads; the sequence length and
head size are the full preset's). `FORESIGHT_KERNEL_BENCH_ROUNDS` sets the rounds (default 5);
`FORESIGHT_KERNEL_BENCH_JSON=FILE` writes the medians as JSON.
"""
from __future__ import annotations

import json
import os
import statistics

import pytest
import torch
from diffusers.models.normalization import RMSNorm
from diffusers.models.transformers.transformer_ltx import apply_rotary_emb
from torch.nn import functional as F

from foresight_engine import kernels
from foresight_engine.bench.kernel_bench import RESULTS, KernelResult
from foresight_engine.bench.machine import machine_info
from foresight_engine.bench.runner import Rounds, measure_interleaved
from foresight_engine.kernels import modulation, rotary, varlen

BF16 = torch.bfloat16
ROUNDS = int(os.environ.get("FORESIGHT_KERNEL_BENCH_ROUNDS", "5"))


def _compile(fn):
    return torch.compile(fn, dynamic=False)


def _modulate(tokens: int, dim: int, quant: torch.dtype | None = None) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, tokens, dim, generator=g).to(BF16)
    ada = torch.randn(1, tokens, 6, dim, generator=g).to(BF16) * 0.1  # the static plan's per-token table
    shift, scale = ada[:, :, 0], ada[:, :, 1]
    qs = torch.tensor(0.05) if quant else None
    norm = RMSNorm(dim, eps=1e-6, elementwise_affine=False)
    ref = lambda: modulation.reference(x, scale, shift, 1e-6, qs, quant)  # noqa: E731
    compiled = _compile(modulation.reference)
    model = (lambda: norm(x) * (1 + scale) + shift) if quant is None else None
    return dict(native=lambda: kernels.rmsnorm_modulate(x, scale, shift, 1e-6, qs, quant), reference=ref,
                compiled=lambda: compiled(x, scale, shift, 1e-6, qs, quant), model=model)


def _rope(tokens: int, dim: int) -> dict:
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, tokens, dim, generator=g).to(BF16) for _ in range(2))
    angles = torch.rand(1, tokens, dim // 2, generator=g) * 6.28
    cos, sin = (f(angles).repeat_interleave(2, -1) for f in (torch.cos, torch.sin))  # diffusers' layout [B, S, D]
    c, s = kernels.compact_rope(cos, sin)
    norm_q, norm_k = (torch.nn.RMSNorm(dim, eps=1e-5).to(BF16) for _ in range(2))
    w = norm_q.weight.detach()
    compiled = _compile(rotary.reference)
    return dict(native=lambda: kernels.rmsnorm_rope(q, k, w, w, c, s, 1e-5),
                reference=lambda: rotary.reference(q, k, w, w, c, s, 1e-5),
                compiled=lambda: compiled(q, k, w, w, c, s, 1e-5),
                model=lambda: (apply_rotary_emb(norm_q(q), (cos, sin)), apply_rotary_emb(norm_k(k), (cos, sin))))


def _attention(lengths: list[int], heads: int, head_dim: int, model_sdpa: bool = False) -> dict:
    g = torch.Generator().manual_seed(0)
    total = sum(lengths)
    q, k, v = (torch.randn(total, heads, head_dim, generator=g).to(BF16) for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    longest = max(lengths)
    compiled = _compile(varlen.reference)
    case = dict(native=lambda: kernels.varlen_attention(q, k, v, cu, longest),
                reference=lambda: varlen.reference(q, k, v, cu, longest),
                compiled=lambda: compiled(q, k, v, cu, longest))
    if model_sdpa:  # LTX's self-attention: one SDPA over [B, H, S, d]
        qb, kb, vb = (t.view(len(lengths), lengths[0], heads, head_dim).transpose(1, 2) for t in (q, k, v))
        case["model"] = lambda: F.scaled_dot_product_attention(qb, kb, vb)
    return case


# (op, shape, where it runs, inputs); small = preset `small` (LTX 768 tokens x 512, vision 64 patches x 256),
# full = `full` (LTX 6144 tokens x 2048, vision 1024 patches x 1280 in windows of 64)
CASES = [
    ("rmsnorm_modulate", "small-ltx", lambda: _modulate(768, 512)),
    ("rmsnorm_modulate", "full-ltx", lambda: _modulate(6144, 2048)),
    ("rmsnorm_modulate+int8", "full-ltx", lambda: _modulate(6144, 2048, torch.int8)),
    ("rmsnorm_rope", "small-ltx", lambda: _rope(768, 512)),
    ("rmsnorm_rope", "full-ltx", lambda: _rope(6144, 2048)),
    ("varlen_attention", "small-ltx-self", lambda: _attention([768], 8, 64, model_sdpa=True)),
    ("varlen_attention", "full-ltx-self-4of32heads", lambda: _attention([6144], 4, 64, model_sdpa=True)),
    ("varlen_attention", "small-vision", lambda: _attention([64], 4, 64)),
    ("varlen_attention", "full-vision-windows", lambda: _attention([64] * 16, 16, 80)),
    ("varlen_attention", "full-vision-fullattn", lambda: _attention([1024], 16, 80)),
]


@pytest.mark.parametrize("op,shape,make", CASES, ids=[f"{o}-{s}" for o, s, _ in CASES])
def test_kernel(benchmark, op, shape, make):
    if kernels.native_status().cpu_library is None:
        pytest.skip("native kernels not built (make kernels)")
    parts = make()
    contenders = {"native": parts["native"], "reference": parts["reference"], "inductor": parts["compiled"]}
    if parts.get("model") is not None:
        contenders["model code"] = parts["model"]
    with torch.inference_mode():
        timed = measure_interleaved(contenders, Rounds(warmup=1, rounds=ROUNDS))
        result = KernelResult(op, shape, {k: statistics.median(ts) * 1e3 for k, (ts, _) in timed.items()})
        benchmark.group = f"kernels/{op}"
        benchmark.extra_info.update(medians_ms=result.medians_ms, threads=torch.get_num_threads(),
                                    isa=kernels.native_status().isa, machine=machine_info())
        benchmark.pedantic(parts["native"], rounds=3, warmup_rounds=1, iterations=1)
    RESULTS.append(result)
    path = os.environ.get("FORESIGHT_KERNEL_BENCH_JSON")
    if path:
        with open(path, "w") as f:
            json.dump([vars(r) for r in RESULTS], f, indent=2)


def test_reasoning_step_with_and_without_the_kernels(benchmark):
    """What the wiring buys one reasoning step: the small preset's runtime in bf16 (static denoising loop, eager
    components), the custom ops on (default) or off, predict() timed round-robin; its denoise stage from the
    predictions' own timings (medians over the same rounds)."""
    from foresight_engine.bench.contenders import BenchContext
    from foresight_engine.engine import Engine
    ctx = BenchContext("small")
    engine = Engine(ctx.model_at("bf16"), overlap=False)
    inputs = ctx.inputs
    last, stages = {}, {"kernels": [], "no kernels": []}

    def step(label, mode):
        def run():
            with kernels.set_wiring(mode):
                last[label] = engine.predict(inputs.images, inputs.prompt, **inputs.settings)
            stages[label].append(last[label].timings.stages)
        return run
    timed = measure_interleaved({"kernels": step("kernels", "auto"), "no kernels": step("no kernels", "off")},
                                Rounds(warmup=1, rounds=max(3, ROUNDS // 2)))
    where = "small, runtime-bf16, sequential"
    RESULTS.append(KernelResult("reasoning step (all wired ops)", where, {
        "native": statistics.median(timed["kernels"][0]) * 1e3,
        "reference": statistics.median(timed["no kernels"][0]) * 1e3}))
    # the denoising loop is where the LTX ops run (the small preset's vision tower is 80 patches: noise-level)
    per_mode = {label: statistics.median(s["denoise"] for s in runs[1:]) * 1e3 for label, runs in stages.items()}
    RESULTS.append(KernelResult("denoise stage (3 ops in the static loop)", where,
                                {"native": per_mode["kernels"], "reference": per_mode["no kernels"]}))
    benchmark.extra_info.update(medians_ms={r.op: r.medians_ms for r in RESULTS[-2:]})
    benchmark.pedantic(step("kernels", "auto"), rounds=1, iterations=1)
    frames = {label: p.frames.astype(int) for label, p in last.items()}
    assert abs(frames["kernels"] - frames["no kernels"]).mean() < 2.0  # bf16: the same video
