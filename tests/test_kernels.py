"""Custom ops (foresight_engine.kernels): the native library was built, every CPU path (scalar, AVX-512,
AVX512-BF16) equals the plain-PyTorch reference within its precision's tolerance, the fallback, fakes, errors."""
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from foresight_engine import kernels
from foresight_engine.errors import KernelError
from foresight_engine.kernels import _native, modulation, rotary, varlen

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1e-2, atol=1e-2)}
CPU_PATHS = [isa for isa in _native.ISAS if kernels.native_status().cpu_isa is None
             or _native.ISAS.index(isa) <= _native.ISAS.index(kernels.native_status().cpu_isa)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _assert_close(got, want, dtype):
    """Relative L2 within the precision's tolerance (fp32 1e-5, bf16 1e-2), and elementwise within it too."""
    assert got.dtype == want.dtype and got.shape == want.shape
    assert _rel(got, want) < TOL[dtype]["rtol"]
    torch.testing.assert_close(got.float(), want.float(), rtol=TOL[dtype]["rtol"] * 4, atol=TOL[dtype]["atol"] * 4)


def test_native_library_was_built():
    """`make test` builds CMakeLists.txt first: CI must never test only the reference fallback."""
    status = kernels.native_status()
    assert status.cpu_library is not None, f"native kernels not loaded ({status.error}); run `make kernels`"
    assert status.isa == status.cpu_isa and status.isa in _native.ISAS
    if shutil.which("nvcc"):  # the CUDA sources must compile wherever a CUDA compiler is installed
        assert status.cuda_library is not None, "nvcc is installed but libforesight_kernels_cuda.so was not built"


def _modulate_inputs(dtype, b=2, s=37, d=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, s, d, generator=g).to(dtype)
    ada = (torch.randn(1, s, 6, d, generator=g) * 0.3).to(dtype)  # per-token table, as in the static plan
    return x, ada[:, :, 1], ada[:, :, 0]  # scale, shift: strided [1, S, D] views


@pytest.mark.parametrize("isa", CPU_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_modulate_matches_reference_on_every_cpu_path(isa, dtype):
    x, scale, shift = _modulate_inputs(dtype)
    with kernels.use_isa(isa):
        _assert_close(kernels.rmsnorm_modulate(x, scale, shift, 1e-6),
                      modulation.reference(x, scale, shift, 1e-6), dtype)
        # other broadcasts: per batch element, one row for everything; D not a multiple of the vector width
        x2, s2, h2 = _modulate_inputs(dtype, b=3, s=5, d=37, seed=1)
        for sc, sh in ((s2[:, :1].expand(3, 1, 37).contiguous(), h2), (s2[0, 0], h2[0, 0])):
            _assert_close(kernels.rmsnorm_modulate(x2, sc, sh, 1e-6), modulation.reference(x2, sc, sh, 1e-6), dtype)


@pytest.mark.parametrize("isa", CPU_PATHS)
@pytest.mark.parametrize("quant_dtype", [torch.int8, torch.float8_e4m3fn])
def test_rmsnorm_modulate_quantizes_like_the_reference(isa, quant_dtype):
    """Saturating, ties-to-even quantization with one per-tensor scale (ONNX QuantizeLinear, builders/fp8.py)."""
    x, scale, shift = _modulate_inputs(torch.bfloat16, s=64)
    quant_scale = torch.tensor(0.01 if quant_dtype == torch.int8 else 0.002)  # saturates the largest values
    with kernels.use_isa(isa):
        got = kernels.rmsnorm_modulate(x, scale, shift, 1e-6, quant_scale, quant_dtype)
    want = modulation.reference(x, scale, shift, 1e-6, quant_scale, quant_dtype)
    assert got.dtype == quant_dtype
    g, w = got.float(), want.float()
    assert (w.abs() == w.abs().max()).any() and w.abs().max() in (128.0, 448.0)  # the test reaches saturation
    # one fp32 rounding step apart at most: y itself is computed in a different order (fp32 ulps)
    assert (g != w).float().mean() < 2e-3
    step = 1.0 if quant_dtype == torch.int8 else (w.abs() / 8).clamp_min(2 ** -9)
    assert ((g - w).abs() <= step).all()


def _rope_inputs(dtype, b=2, s=19, d=96, batch_table=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(b, s, d, generator=g).to(dtype) for _ in range(2))
    qw, kw = (torch.randn(d, generator=g).to(dtype) for _ in range(2))
    angles = torch.rand(b if batch_table else 1, s, d // 2, generator=g) * 6.3
    cos, sin = kernels.compact_rope(angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1))
    return q, k, qw, kw, cos, sin


@pytest.mark.parametrize("isa", CPU_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rmsnorm_rope_matches_reference_and_diffusers(isa, dtype):
    from diffusers.models.transformers.transformer_ltx import apply_rotary_emb
    for batch_table, d in ((False, 96), (True, 20)):
        q, k, qw, kw, cos, sin = _rope_inputs(dtype, d=d, batch_table=batch_table)
        with kernels.use_isa(isa):
            got = kernels.rmsnorm_rope(q, k, qw, kw, cos, sin, 1e-5)
        want = rotary.reference(q, k, qw, kw, cos, sin, 1e-5)
        for g, w in zip(got, want):
            _assert_close(g, w, dtype)
    if dtype == torch.float32:  # the reference is LTX's own norm_q + apply_rotary_emb on the full tables
        norm = torch.nn.RMSNorm(d, eps=1e-5)
        norm.weight.data.copy_(qw)
        full = (cos.repeat_interleave(2, -1), sin.repeat_interleave(2, -1))
        torch.testing.assert_close(want[0], apply_rotary_emb(norm(q), full), rtol=1e-5, atol=1e-5)


def _attention_inputs(dtype, lengths, heads=3, d=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    qkv = torch.randn(total, 3, heads, d, generator=g).to(dtype)  # strided q, k, v: views of one packed tensor
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    return qkv[:, 0], qkv[:, 1], qkv[:, 2], cu


@pytest.mark.parametrize("isa", CPU_PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_varlen_attention_matches_per_sequence_sdpa(isa, dtype):
    # lengths: odd, empty, longer than a 64-key block, one token; head sizes: odd, not a multiple of 16
    for lengths, d in (([7, 0, 70, 1, 33], 40), ([64, 64], 33), ([5], 80)):
        q, k, v, cu = _attention_inputs(dtype, lengths, d=d)
        with kernels.use_isa(isa):
            got = kernels.varlen_attention(q, k, v, cu, max(lengths))
        _assert_close(got, varlen.reference(q, k, v, cu, max(lengths)), dtype)
        with kernels.use_isa(isa):  # explicit softmax scale
            got = kernels.varlen_attention(q, k, v, cu, max(lengths), 0.3)
        _assert_close(got, varlen.reference(q, k, v, cu, max(lengths), 0.3), dtype)


def test_varlen_attention_padded_form_equals_reference():
    """The host-read-free formulation (what the ONNX translation and the CUDA fallback compute)."""
    q, k, v, cu = _attention_inputs(torch.float32, [7, 0, 70, 1, 33])
    torch.testing.assert_close(varlen.padded(q, k, v, cu, 80), varlen.reference(q, k, v, cu, 80),
                               rtol=1e-5, atol=1e-5)


def test_scalar_fallback_is_chosen_by_the_environment():
    """FORESIGHT_KERNELS_ISA caps the instruction set at load time (a fresh process); unknown names are refused."""
    code = ("from foresight_engine.kernels import native_status, rmsnorm_modulate; import torch; "
            "x = torch.randn(1, 3, 8); rmsnorm_modulate(x, x, x, 1e-6); print(native_status().isa)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.getcwd(),
                         env={**os.environ, "FORESIGHT_KERNELS_ISA": "scalar"})
    assert run.returncode == 0 and run.stdout.strip() == "scalar", run.stderr
    with pytest.raises(KernelError, match="avx9000"):
        _native.isa_level("avx9000")


def test_missing_library_falls_back_to_the_reference_with_one_warning(monkeypatch, caplog):
    monkeypatch.setenv("FORESIGHT_KERNELS_LIB", "/nonexistent/libforesight_kernels.so")
    _native._loaded.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="foresight_engine.kernels._native"):
            x, scale, shift = _modulate_inputs(torch.float32)
            for _ in range(3):
                got = kernels.rmsnorm_modulate(x, scale, shift, 1e-6)
        warnings = [r for r in caplog.records if "native kernels unavailable" in r.getMessage()]
        assert len(warnings) == 1 and "/nonexistent" in warnings[0].getMessage()
        assert "make kernels" in warnings[0].getMessage()
        torch.testing.assert_close(got, modulation.reference(x, scale, shift, 1e-6), rtol=0, atol=0)
        assert kernels.native_status().cpu_library is None
    finally:
        monkeypatch.delenv("FORESIGHT_KERNELS_LIB")
        _native._loaded.cache_clear()
    assert kernels.native_status().cpu_library is not None


def test_fake_tensors_give_shapes_and_dtypes_on_any_device():
    """The fakes let torch.compile / torch.export trace the ops, also for a (fake) CUDA device."""
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        for device in ("cpu", "cuda"):
            x = torch.empty(2, 16, 64, dtype=torch.bfloat16, device=device)
            out = kernels.rmsnorm_modulate(x, x[:1], x[:1], 1e-6, torch.ones((), device=device), torch.int8)
            assert out.shape == x.shape and out.dtype == torch.int8 and out.device.type == device
            cos = torch.empty(1, 16, 32, device=device)
            q, k = kernels.rmsnorm_rope(x, x, x[0, 0], x[0, 0], cos, cos, 1e-5)
            assert q.shape == k.shape == x.shape and q.dtype == torch.bfloat16
            t = torch.empty(10, 4, 16, device=device)
            cu = torch.tensor([0, 4, 10], dtype=torch.int32, device=device)
            out = kernels.varlen_attention(t, t, t, cu, 6)
            assert out.shape == t.shape and isinstance(out, type(mode.from_tensor(t)))


@pytest.mark.parametrize("call,message", [
    (lambda: kernels.rmsnorm_modulate(torch.randn(2, 3, 8), torch.randn(3, 3, 8), torch.randn(8), 1e-6),
     "does not broadcast"),
    (lambda: kernels.rmsnorm_modulate(torch.randn(2, 3, 8), torch.randn(8).bfloat16(), torch.randn(8), 1e-6),
     "dtype"),
    (lambda: kernels.rmsnorm_modulate(torch.randn(2, 3, 8), torch.randn(8), torch.randn(8), 1e-6,
                                      torch.tensor(1.0), None), "together"),
    (lambda: kernels.rmsnorm_rope(torch.randn(1, 3, 7), torch.randn(1, 3, 7), torch.randn(7), torch.randn(7),
                                  torch.randn(1, 3, 3), torch.randn(1, 3, 3), 1e-5), "D even"),
    (lambda: kernels.rmsnorm_rope(torch.randn(1, 3, 8), torch.randn(1, 3, 8), torch.randn(8), torch.randn(8),
                                  torch.randn(1, 3, 8), torch.randn(1, 3, 8), 1e-5), "compact_rope"),
    (lambda: kernels.varlen_attention(*[torch.randn(6, 2, 8)] * 3, torch.tensor([0, 2, 5], dtype=torch.int32), 3),
     "T=6"),
    (lambda: kernels.varlen_attention(*[torch.randn(6, 2, 8)] * 3, torch.tensor([0, 6], dtype=torch.int32), 4),
     "max_seqlen=4"),
    (lambda: kernels.varlen_attention(*[torch.randn(6, 2, 8)] * 3, torch.tensor([0.0, 6.0]), 6), "int32"),
])
def test_bad_inputs_raise_a_kernel_error_naming_them(call, message):
    with pytest.raises(KernelError, match=message):
        call()


def test_wiring_switch():
    assert kernels.wired("varlen_attention", "cpu") == ("cpu" in kernels.WINS["varlen_attention"])
    with kernels.set_wiring("off"):
        assert kernels.wired_ops("cpu") == frozenset()
    with kernels.set_wiring("all"):
        assert kernels.wired_ops("cuda") == frozenset(kernels.OPS)
    with pytest.raises(KernelError, match="sometimes"):
        with kernels.set_wiring("sometimes"):
            pass
    with pytest.raises(KernelError, match="flash"):
        kernels.wired("flash", "cpu")


def test_threads_split_work_without_changing_results():
    """Rows (norms) and (sequence, head) items (attention) are independent: 2 threads give the 1-thread bits.
    The shapes are large enough to pass the kernels' grain (small calls stay on the calling thread)."""
    x, scale, shift = _modulate_inputs(torch.bfloat16, b=1, s=512, d=256)
    q, k, qw, kw, cos, sin = _rope_inputs(torch.bfloat16, b=1, s=512, d=256)
    qa, ka, va, cu = _attention_inputs(torch.bfloat16, [300, 200], heads=4, d=64)
    calls = (lambda: kernels.rmsnorm_modulate(x, scale, shift, 1e-6),
             lambda: kernels.rmsnorm_rope(q, k, qw, kw, cos, sin, 1e-5)[1],
             lambda: kernels.varlen_attention(qa, ka, va, cu, 300))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = [f() for f in calls]
        torch.set_num_threads(2)
        assert all(torch.equal(f(), want) for f, want in zip(calls, serial))
    finally:
        torch.set_num_threads(before)
