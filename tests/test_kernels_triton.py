"""The Triton (GPU) kernels, run on CPU tensors by Triton's interpreter, against the references. Small shapes: the
interpreter runs every program in Python.

TRITON_INTERPRET=1 must be set before triton is first imported (triton.language's own jit functions read it), and
torch imports triton early; so this module runs itself once in a fresh process with the variable set
(`test_triton_kernels_under_the_interpreter`), where the other tests here do the work.
"""
import importlib
import os
import subprocess
import sys

import pytest
import torch

from foresight_engine import kernels
from foresight_engine.kernels import modulation, rotary, varlen

pytest.importorskip("triton")
INSIDE = os.environ.get("TRITON_INTERPRET") == "1"
inside = pytest.mark.skipif(not INSIDE, reason="runs in the interpreter process")


@pytest.mark.skipif(INSIDE, reason="this is the interpreter process")
def test_triton_kernels_under_the_interpreter():
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                         capture_output=True, text=True, cwd=os.getcwd(), env={**os.environ, "TRITON_INTERPRET": "1"})
    summary = run.stdout.strip().splitlines()[-1]
    assert run.returncode == 0 and " passed" in summary, run.stdout[-4000:] + run.stderr[-2000:]
    assert "1 skipped" in summary or "skipped" not in summary, summary  # only this launcher skips inside


@pytest.fixture(scope="module")
def interpreted():
    return {name: importlib.import_module(f"foresight_engine.kernels.{name}")
            for name in ("modulation_triton", "rotary_triton", "varlen_triton")}


@inside
@pytest.mark.parametrize("dtype,quant", [(torch.float32, None), (torch.bfloat16, None), (torch.bfloat16, torch.int8),
                                         (torch.bfloat16, torch.float8_e4m3fn)])
def test_triton_rmsnorm_modulate(interpreted, dtype, quant):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 40, generator=g).to(dtype)
    scale = (torch.randn(1, 3, 40, generator=g) * 0.3).to(dtype).expand(2, 3, 40)
    shift = torch.randn(2, 1, 40, generator=g).to(dtype).expand(2, 3, 40)
    qs = torch.tensor([0.01]) if quant else None
    out = torch.empty(x.shape, dtype=quant or dtype)
    interpreted["modulation_triton"].launch(x, scale, shift, 1e-6, qs, out)
    want = modulation.reference(x, scale, shift, 1e-6, qs, quant)
    if quant is None:
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(out.float(), want.float(), rtol=tol, atol=tol)
    else:  # y is summed in another order than the reference's: one quantization step apart at most
        g_, w_ = out.float(), want.float()
        step = 1.0 if quant == torch.int8 else (w_.abs() / 8).clamp_min(2 ** -9)
        assert ((g_ - w_).abs() <= step).all() and (g_ != w_).float().mean() < 0.05


@inside
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_rmsnorm_rope(interpreted, dtype):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 3, 24, generator=g).to(dtype) for _ in range(2))
    qw, kw = (torch.randn(24, generator=g).to(dtype) for _ in range(2))
    angles = torch.rand(1, 3, 12, generator=g) * 6.3
    cos, sin = angles.cos(), angles.sin()
    q_out, k_out = torch.empty_like(q), torch.empty_like(k)
    interpreted["rotary_triton"].launch(q, k, qw, kw, cos[0], sin[0], 0, 1e-5, q_out, k_out)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for got, want in zip((q_out, k_out), rotary.reference(q, k, qw, kw, cos, sin, 1e-5)):
        torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)


@inside
# fp32 only: the interpreter gets bf16 tl.dot wrong (bf16 Triton attention is in tests/test_kernels_gpu.py)
@pytest.mark.parametrize("dtype", [torch.float32])
def test_triton_varlen_attention(interpreted, dtype):
    g = torch.Generator().manual_seed(0)
    lengths = [5, 0, 21]
    qkv = torch.randn(sum(lengths), 3, 2, 12, generator=g).to(dtype)  # strided q, k, v
    q, k, v = qkv.unbind(1)
    cu = torch.tensor([0, 5, 5, 26], dtype=torch.int32)
    out = torch.empty(q.shape, dtype=dtype)
    interpreted["varlen_triton"].launch(q, k, v, cu, 21, 12 ** -0.5, out, block_m=16, block_n=16)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), varlen.reference(q, k, v, cu, 21).float(), rtol=tol, atol=tol)


def test_gpu_paths_are_not_wired_where_nothing_was_measured():
    """No GPU was measured: by default the ops are wired on the CPU only (FORESIGHT_KERNELS=all wires them)."""
    assert kernels.wired_ops("cuda") == frozenset()
