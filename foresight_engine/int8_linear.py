"""int8 Linears for the CPU: static per-tensor activation scales (calibrated), per-channel weight scales.

Shared by `builders/` (`builders/int8.py` calibrates and quantizes) and `engine/` (load, run), like `precision.py`.

Representation: PyTorch's PT2E quantized form, the one `X86InductorQuantizer` + `convert_pt2e` emit:
`quantize_per_tensor` (uint8, zero point 128: a symmetric range, scale = calibrated input amax / 127) ->
`dequantize_per_tensor` -> `linear` with a `dequantize_per_channel` int8 weight (scale = row amax / 127), under
autocast to the layer's compute dtype (bf16). Eager, that is a simulation (the weights are dequantized every call).
Compiled with freezing (`torch.compile` or AOTInductor), torchao's x86 inductor passes (imported by
`enable_kernels`) match the pattern and replace it with oneDNN's `qlinear_pointwise`: u8 x s8 GEMMs on VNNI (AMX
where present), the weight prepacked once, the bias, the activation's quantization and the next op fused where the
pattern allows. Measured against torchao's own int8 configs and ONNX Runtime's QDQ path in
`foresight_engine.bench.int8_kernels` (README, "int8 on the CPU").

An int8 component's state dict holds each quantized layer's `qweight` (int8 [N, K]), `weight_scale` (fp32 [N]),
`weight_zero_point` (int64 [N], zeros), `input_amax` (fp32 []) and `bias` (in the compute dtype); `shells()` turns
the named Linears of a freshly built component into empty `Int8Linear`s so those tensors load into them.
"""
from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .errors import BackendUnavailable, CalibrationError

QWEIGHT = "qweight"  # the state-dict key suffix that marks an int8 layer
_ZERO_POINT = 128  # uint8 activations, symmetric range
_TINY = 1e-12


@functools.cache
def _decomposed_ops():
    """`torch.ops.quantized_decomposed` (registered by importing its defining module)."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401
    return torch.ops.quantized_decomposed


@functools.cache
def enable_kernels() -> str:
    """Register torchao's x86 inductor passes (Q/DQ Linear -> oneDNN int8 GEMM); returns torchao's version.
    Without them a compiled int8 layer stays a simulation, so a missing torchao raises `BackendUnavailable`."""
    try:
        import torchao
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401  (registers the passes)
    except ImportError as exc:
        raise BackendUnavailable(f"int8 on the CPU needs torchao's x86 inductor passes ({exc}); install it with "
                                 "`pip install 'foresight-engine[int8]'`") from exc
    return torchao.__version__


class Int8Linear(nn.Module):
    """`nn.Linear` with an int8 per-channel weight and a calibrated uint8 per-tensor input (see the module doc)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype,
                 device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features, self.compute_dtype = in_features, out_features, dtype
        self.register_buffer(QWEIGHT, torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.register_buffer("weight_zero_point", torch.zeros(out_features, dtype=torch.int64, device=device))
        self.register_buffer("input_amax", torch.ones((), dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device), requires_grad=False) \
            if bias else None
        self.input_scale = 1.0 / 127  # a Python float: the pattern inductor matches takes a constant scale
        self.register_load_state_dict_post_hook(lambda module, _: module._sync_scale())

    def _sync_scale(self) -> None:
        self.input_scale = max(float(self.input_amax), _TINY) / 127

    def _apply(self, fn, recurse=True):
        """Device moves apply to everything; a dtype cast (a precision policy's `.to(bf16)`) only to the bias: the
        scales stay fp32, the quantized weight int8."""
        scales = {name: self._buffers[name] for name in ("weight_scale", "input_amax")}
        super()._apply(fn, recurse)
        for name, kept in scales.items():
            self._buffers[name] = kept.to(self._buffers[name].device)
        if self.bias is not None:
            self.compute_dtype = self.bias.dtype
        return self

    @classmethod
    def from_linear(cls, linear: nn.Linear, input_amax: float) -> "Int8Linear":
        """Quantize `linear`'s weight per output channel; `input_amax` is its calibrated max |input|."""
        w = linear.weight.detach().float()
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.dtype,
                    linear.weight.device)
        scale = w.abs().amax(dim=1).clamp_min(_TINY) / 127  # [N]
        layer.qweight.copy_(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        layer.weight_scale.copy_(scale)
        layer.input_amax.fill_(input_amax)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        layer._sync_scale()
        return layer

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight [N, K] (what the layer multiplies by), in the compute dtype."""
        return (self.qweight.float() * self.weight_scale[:, None]).to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = _decomposed_ops()
        q = qd.quantize_per_tensor(x, self.input_scale, _ZERO_POINT, 0, 255, torch.uint8)
        x = qd.dequantize_per_tensor(q, self.input_scale, _ZERO_POINT, 0, 255, torch.uint8)
        w = qd.dequantize_per_channel(self.qweight, self.weight_scale, self.weight_zero_point, 0, -128, 127,
                                      torch.int8)
        # autocast (not .to()) is the form inductor's int8-mixed-bf16 pattern matches
        with torch.autocast(x.device.type, dtype=self.compute_dtype, enabled=self.compute_dtype != torch.float32):
            return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"int8 weight per channel, uint8 input scale {self.input_scale:.4g}, compute {self.compute_dtype}")


def _replace(module: nn.Module, name: str, layer: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, child, layer)


def quantize(module: nn.Module, input_amax: Mapping[str, float]) -> list[str]:
    """Swap (in place) every Linear named in `input_amax` (names relative to `module`) for an `Int8Linear`;
    returns the names, sorted."""
    layers = dict(module.named_modules())
    bad = sorted(n for n in input_amax if type(layers.get(n)) is not nn.Linear)
    if bad:
        raise CalibrationError(f"int8: {bad} are not plain nn.Linear layers of {type(module).__name__}")
    for name, amax in sorted(input_amax.items()):
        _replace(module, name, Int8Linear.from_linear(layers[name], amax))
    return sorted(input_amax)


def int8_layers(state_dict_keys: "list[str] | Mapping[str, object]") -> list[str]:
    """The int8 layers a component's state dict holds (names relative to the component)."""
    return sorted(k[:-len(QWEIGHT) - 1] for k in state_dict_keys if k.endswith("." + QWEIGHT))


def shells(module: nn.Module, names: list[str]) -> None:
    """Replace the Linears `names` of a freshly built component with empty `Int8Linear`s of the same shape (their
    tensors then load from the component's state dict)."""
    layers = dict(module.named_modules())
    for name in names:
        linear = layers.get(name)
        if not isinstance(linear, nn.Linear):
            raise CalibrationError(f"int8 state names layer {name!r}, which is not an nn.Linear of "
                                   f"{type(module).__name__}")
        _replace(module, name, Int8Linear(linear.in_features, linear.out_features, linear.bias is not None,
                                          linear.weight.dtype, linear.weight.device))


__all__ = ["Int8Linear", "QWEIGHT", "enable_kernels", "int8_layers", "quantize", "shells"]
