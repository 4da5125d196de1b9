"""The custom ops on a CUDA GPU (`make gpu-check`): Triton, flash-attn and the compiled CUDA library against the
references. Skipped where there is no GPU (this project's CI); the CPU-side checks are in test_kernels*.py."""
import pytest
import torch

from foresight_engine import kernels
from foresight_engine.kernels import _native, modulation, rotary, varlen

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _close(got, want, dtype):
    torch.testing.assert_close(got.float().cpu(), want.float().cpu(), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ops_on_cuda_match_the_references(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 300, 512, generator=g).to(dtype).cuda()
    scale, shift = (torch.randn(1, 300, 512, generator=g) * 0.3).to(dtype).cuda(), torch.randn(512).to(dtype).cuda()
    _close(kernels.rmsnorm_modulate(x, scale, shift, 1e-6), modulation.reference(x, scale, shift, 1e-6), dtype)
    qs = torch.tensor(0.02, device="cuda")
    for quant in (torch.int8, torch.float8_e4m3fn):
        got = kernels.rmsnorm_modulate(x, scale, shift, 1e-6, qs, quant).float()
        want = modulation.reference(x, scale, shift, 1e-6, qs, quant).float()
        assert (got != want).float().mean() < 2e-3
    w = torch.randn(512, generator=g).to(dtype).cuda()
    angles = torch.rand(1, 300, 256, generator=g).cuda() * 6.3
    for a, b in zip(kernels.rmsnorm_rope(x, x, w, w, angles.cos(), angles.sin(), 1e-5),
                    rotary.reference(x, x, w, w, angles.cos(), angles.sin(), 1e-5)):
        _close(a, b, dtype)
    lengths = [64] * 15 + [37]
    q, k, v = (torch.randn(sum(lengths), 16, 80, generator=g).to(dtype).cuda() for _ in range(3))
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    _close(kernels.varlen_attention(q, k, v, cu, 64), varlen.reference(q, k, v, cu, 64), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_cuda_library_matches_the_references(dtype):
    lib = _native.cuda_library()
    if lib is None:
        pytest.skip("libforesight_kernels_cuda.so not built (make kernels with nvcc)")
    x = torch.randn(1, 100, 96, dtype=dtype, device="cuda")
    scale, shift = torch.randn_like(x) * 0.3, torch.randn_like(x)
    out = torch.empty_like(x)
    stream = torch.cuda.current_stream().cuda_stream
    code = _native.DTYPE_CODES[dtype]
    _native.check(lib.fk_cuda_rmsnorm_modulate(code, x.data_ptr(), scale.data_ptr(), shift.data_ptr(), 1, 100, 96,
                                               0, 96, 0, 96, 1e-6, code, None, out.data_ptr(), stream), "test")
    _close(out, modulation.reference(x, scale, shift, 1e-6), dtype)
    w = torch.randn(96, dtype=dtype, device="cuda")
    cos, sin = torch.rand(100, 48, device="cuda"), torch.rand(100, 48, device="cuda")
    q_out, k_out = torch.empty_like(x), torch.empty_like(x)
    _native.check(lib.fk_cuda_rmsnorm_rope(code, x.data_ptr(), shift.data_ptr(), w.data_ptr(), w.data_ptr(),
                                           cos.data_ptr(), sin.data_ptr(), 0, 1, 100, 96, 1e-5, q_out.data_ptr(),
                                           k_out.data_ptr(), stream), "test")
    want = rotary.reference(x, shift, w, w, cos[None], sin[None], 1e-5)
    _close(q_out, want[0], dtype)
    _close(k_out, want[1], dtype)
