"""Operator families: one vocabulary for the measured profile (`op_profile.py`, torch.profiler rows) and the paper
profile of `foresight-engine plan --by-family` (`FamilyCounter`, torch functions counted on the meta device).

GEMMs, attention, norms/modulation, RoPE, elementwise, VAE convolutions, copies: the split the kernels were chosen
from (README, Kernels).
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import sdpa_flop_count

FAMILIES = ("GEMMs", "attention", "norms/modulation", "RoPE", "elementwise", "VAE convolutions", "copies", "other")

# first match wins; patterns are matched against the lower-cased op or kernel name
_RULES: tuple[tuple[str, str], ...] = (
    ("GEMMs", r"(^|::|_)(mm|addmm|bmm|baddbmm|_int_mm|linear|matmul|mkl_linear|linear_pointwise|"
              r"_weight_int8pack_mm)$"
              r"|mkldnn_linear|onednn.*linear|qlinear"),
    ("attention", r"scaled_dot_product|flash_attention|attention|_softmax|softmax"),
    ("VAE convolutions", r"conv"),
    ("RoPE", r"neg.*(stack|cat)|(stack|cat).*neg|rotary|rope|^aten::neg$|^aten::stack$"),
    ("norms/modulation", r"norm|rsqrt|(^|_)mean(_|$)|(^|_)var(_|$)|modulate"),
    ("copies", r"^aten::(copy_|_to_copy|to|float|bfloat16|half|type|type_as|reshape|getitem|clone|contiguous|cat|"
               r"flatten|concatenate|index|index_select|index_copy_|gather|where|"
               r"expand_as|repeat|repeat_interleave|fill_|zero_|zeros|zeros_like|empty|empty_like|"
               r"new_empty|new_zeros|full|slice_scatter|select_scatter|narrow|constant_pad_nd|pad)$"
               r"|^cpp_fused_(_to_copy|clone|cat|copy|index|where|constant_pad_nd)(_(_to_copy|clone|cat|copy|index|"
               r"where|constant_pad_nd|[0-9]+))*$"),
    ("elementwise", r"^aten::(add|add_|sub|sub_|mul|mul_|div|div_|addcmul|pow|exp|tanh|gelu|silu|sigmoid|clamp|"
                    r"neg|abs|rsub|sqrt|sin|cos|lerp|maximum|minimum|erf|softplus|relu|leaky_relu)$|^cpp_fused_"),
)


def kernel_name(name: str) -> str:
    """An inductor kernel's name without the graph prefix the profiler adds (`graph_1_cpp_fused_...`)."""
    return re.sub(r"^graph_\d+_", "", name)


def op_family(name: str) -> str:
    """The family of a profiler row: an aten op (`aten::addmm`) or an inductor kernel (`cpp_fused_add_mul_0`)."""
    low = kernel_name(name.lower())
    for family, pattern in _RULES:
        if re.search(pattern, low):
            return family
    return "other"


@dataclass
class FamilyCount:
    """What one family of ops costs in one call of a stage."""

    flops: int = 0
    weight_elements: int = 0  # parameters the family's ops read
    activation_elements: int = 0  # every other tensor element its ops read or write (op by op: no fusion)
    ops: int = 0

    def bytes(self, weight_bytes: float, activation_bytes: float) -> float:
        return self.weight_elements * weight_bytes + self.activation_elements * activation_bytes


_ROTARY_FRAMES = re.compile(r"rotary|rope", re.IGNORECASE)


def _flops(func, args, kwargs, out) -> int:
    """Matmul, attention and convolution FLOPs of one torch function call (2 per multiply-add); 0 otherwise."""
    tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    if not isinstance(out, torch.Tensor) or not tensors:
        return 0
    if func is F.linear:
        return 2 * out.numel() * tensors[0].shape[-1]
    if func in (torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.baddbmm, torch.addmm):
        mats = tensors[-2:]
        return 2 * out.numel() * mats[0].shape[-1]
    if func is F.scaled_dot_product_attention:
        q, k, v = tensors[:3]
        return sdpa_flop_count(q.shape, k.shape, v.shape)
    if func in (F.conv1d, F.conv2d, F.conv3d):
        weight = tensors[1]
        return 2 * out.numel() * weight[0].numel()
    return 0


class FamilyCounter(TorchFunctionMode):
    """Counts every torch function call of a forward by family: FLOPs, parameter and activation elements moved.

    Attribution: the call's name (`op_family`), except that calls made inside a normalization module count as
    norms/modulation and calls made from a rotary-embedding function (its name has "rotary" or "rope") as RoPE.
    Views and no-op casts move nothing. Activations count op by op, as eager code moves them: fusion (inductor,
    TensorRT, the custom kernels) moves fewer."""

    def __init__(self) -> None:
        super().__init__()
        self.families: dict[str, FamilyCount] = {}
        self._norm_depth = 0
        self._hooks = []

    def __enter__(self):
        def pre(module, args):
            if "norm" in type(module).__name__.lower():
                self._norm_depth += 1

        def post(module, args, out):
            if "norm" in type(module).__name__.lower():
                self._norm_depth -= 1
        self._hooks = [nn.modules.module.register_module_forward_pre_hook(pre),
                       nn.modules.module.register_module_forward_hook(post)]
        return super().__enter__()

    def __exit__(self, *exc):
        for hook in self._hooks:
            hook.remove()
        return super().__exit__(*exc)

    def _family(self, name: str) -> str:
        family = op_family(f"aten::{name.strip('_')}")
        if family in ("GEMMs", "attention", "VAE convolutions"):
            return family
        frame = sys._getframe(2)
        for _ in range(6):  # the few frames above this call
            if frame is None:
                break
            if _ROTARY_FRAMES.search(frame.f_code.co_name):
                return "RoPE"
            frame = frame.f_back
        return "norms/modulation" if self._norm_depth else family

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if not outputs or any(o is i or (o._base is not None and (o._base is i or o._base is i._base))
                              for o in outputs for i in inputs):
            return out  # a view or the input itself: nothing moved
        name = getattr(func, "__name__", str(func))
        count = self.families.setdefault(self._family(name), FamilyCount())
        count.ops += 1
        count.flops += _flops(func, args, kwargs, out)
        for t in inputs:
            if func is F.embedding:  # reads one table row per index, not the table
                break
            if isinstance(t, nn.Parameter):
                count.weight_elements += t.numel()
            else:
                count.activation_elements += t.numel()
        count.activation_elements += sum(t.numel() for t in outputs)
        return out
