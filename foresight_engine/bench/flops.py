"""Model FLOPs and memory traffic of a callable, counted by torch (works on real and on meta tensors).

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention), plus the CPU
flash-attention kernel it does not know. Bytes are a roofline model, not a measurement: every weight a heavy op
uses is read once per call, and every heavy op (linear, matmul, convolution, attention) reads its activation
inputs once and writes its output once; norms, activations and residual adds are assumed fused into them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count
from torch.utils._pytree import tree_leaves

from .op_families import FamilyCount, FamilyCounter

# FlopCounterMode counts CUDA/meta attention kernels but not the fused CPU one, which would read as 0 FLOPs.
_CPU_FLASH_ATTENTION = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def _cpu_flash_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts CPU flash attention."""
    return FlopCounterMode(display=False, custom_mapping={_CPU_FLASH_ATTENTION: _cpu_flash_attention_flop})


_HEAVY = {F.linear, F.scaled_dot_product_attention, F.conv1d, F.conv2d, F.conv3d, torch.matmul, torch.bmm,
          torch.Tensor.__matmul__, torch.Tensor.matmul, torch.baddbmm, torch.addmm}


class TrafficCounter(TorchFunctionMode):
    """Counts the elements heavy ops move: distinct weights (parameters) and activations (other tensors)."""

    def __init__(self) -> None:
        super().__init__()
        self._weights: dict[int, int] = {}  # id(parameter) -> numel
        self.activation_elements = 0
        self.largest_op_elements = 0  # activations in + out of the single largest op: a working-set lower bound

    @property
    def weight_elements(self) -> int:
        return sum(self._weights.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _HEAVY:
            moved = 0
            for t in tree_leaves((args, kwargs or {}, out)):
                if isinstance(t, nn.Parameter):
                    self._weights[id(t)] = t.numel()
                elif isinstance(t, torch.Tensor):
                    moved += t.numel()
            self.activation_elements += moved
            self.largest_op_elements = max(self.largest_op_elements, moved)
        return out


@dataclass
class OpCount:
    """What one call of a stage costs: FLOPs, and the elements it moves (multiply by element sizes for bytes)."""

    flops: int
    weight_elements: int = 0
    activation_elements: int = 0
    largest_op_elements: int = 0
    by_op: dict[str, int] = field(default_factory=dict)
    by_family: dict[str, FamilyCount] = field(default_factory=dict)  # op by op (op_families.py)

    def bytes(self, weight_bytes: float, activation_bytes: float) -> float:
        return self.weight_elements * weight_bytes + self.activation_elements * activation_bytes


def count(fn: Callable[..., Any], *args, **kwargs) -> tuple[OpCount, Any]:
    """Run `fn(*args, **kwargs)` once under the counters; returns (count, fn's result)."""
    flops, traffic, families = flop_counter(), TrafficCounter(), FamilyCounter()
    with flops, traffic, families:
        result = fn(*args, **kwargs)
    by_op = {str(k): int(v) for k, v in flops.get_flop_counts().get("Global", {}).items()}
    return OpCount(flops=int(flops.get_total_flops()), weight_elements=traffic.weight_elements,
                   activation_elements=traffic.activation_elements,
                   largest_op_elements=traffic.largest_op_elements, by_op=by_op,
                   by_family=families.families), result


def count_flops(fn: Callable[..., Any], *args, **kwargs) -> int:
    """Model FLOPs of one call of `fn` (a multiply-add counts 2)."""
    counter = flop_counter()
    with counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())
