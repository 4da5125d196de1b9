"""Custom ops (`torch.library`, namespace `foresight`) chosen from the operator profiles (README, Custom kernels).

- `varlen_attention(q, k, v, cu_seqlens, max_seqlen)`: Qwen2.5-VL's window attention (its per-window SDPA loop
  reads the layout on the host) and LTX's self-attention;
- `rmsnorm_modulate(x, scale, shift, eps[, quant_scale, quant_dtype])`: LTX's norm * (1 + scale) + shift, optionally
  quantized for the next GEMM;
- `rmsnorm_rope(q, k, q_weight, k_weight, cos, sin, eps)`: LTX's q/k RMSNorm + rotary embedding.

Each op has a plain-PyTorch `reference`, a fake (torch.compile / torch.export trace through it), a native CPU
kernel (`csrc/`, built by CMakeLists.txt: `make kernels`), a GPU path (Triton; compiled CUDA or flash-attn where
said) and an ONNX translation (`onnx_translations()`, for `torch.onnx.export(custom_translation_table=...)`).

Model code calls an op only where `wired(op, device)` (`wiring.py`): by default on the device types where the kernel
bench (`bench/test_kernels.py`) measured a win; `FORESIGHT_KERNELS=all` / `off` (or `set_wiring()`) change that.
"""
from __future__ import annotations

import torch

from . import _native
from ._native import use_isa
from .modulation import rmsnorm_modulate
from .rotary import compact_rope, rmsnorm_rope
from .varlen import use_in_vision_tower, varlen_attention
from .wiring import OPS, WINS, set_wiring, wired, wired_ops


def native_status() -> _native.NativeStatus:
    """Which native libraries are built and loaded, and the CPU's instruction sets."""
    return _native.status()


def onnx_translations() -> dict:
    """`{op overload: onnxscript function}` for `torch.onnx.export(..., custom_translation_table=...)`."""
    from . import modulation as m, rotary as r, varlen as v
    ops = torch.ops.foresight
    return {ops.varlen_attention.default: v.onnx_translation, ops.rmsnorm_modulate.default: m.onnx_translation,
            ops.rmsnorm_rope.default: r.onnx_translation}


__all__ = ["OPS", "WINS", "compact_rope", "native_status", "onnx_translations", "rmsnorm_modulate", "rmsnorm_rope",
           "set_wiring", "use_in_vision_tower", "use_isa", "varlen_attention", "wired", "wired_ops"]
