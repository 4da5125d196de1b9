"""FP8 (float8 e4m3fn) post-training quantization: calibration, CPU simulation, and Q/DQ nodes in ONNX.

Scheme: per-tensor symmetric scaling of each targeted ``nn.Linear``'s INPUT activation and of its WEIGHT,
``scale = amax / 448`` (448 = largest finite e4m3fn value). Quantize-dequantize of ``x`` with ``scale`` is
``float32(float8_e4m3fn(clamp(x / scale, -448, 448))) * scale``, exactly ONNX's QuantizeLinear (saturate=1) followed
by DequantizeLinear with a float8e4m3fn zero point, so the ONNX graph and the torch simulation agree to fp32
rounding. The matmul itself, the bias and everything outside the targeted Linears stay in the input precision.

API
- ``calibrate(module, batches, *, targets=nn.Linear, skip=None) -> Fp8Scales``: runs ``module`` on every batch
  (a tuple of positional args, a dict of keyword args, or one tensor) under ``torch.no_grad`` with forward
  pre-hooks and records, per targeted Linear, the max |input| over all calls and the max |weight|. ``skip(name,
  layer) -> True`` keeps a layer out (sensitive layers stay in bf16 by policy). Deterministic: same module and
  batches give the same ``Fp8Scales.digest()``. Put the module in ``eval()`` first (calibrate does not change mode).
- ``Fp8Scales``: frozen {layer_name: (input_amax, weight_amax)} (float32 values) with ``digest()`` (sha256 of the
  content), ``save(path)`` / ``Fp8Scales.load(path)`` as ``.safetensors`` (one float32 [2] tensor per layer, format
  and digest in the header metadata; no pickle) or ``.json`` ({"format", "digest", "amax": {name: [in, w]}}).
  ``load`` re-computes the digest and refuses a file whose content does not match it.
- ``batches_digest(batches) -> str``: sha256 of a calibration set (dtypes, shapes, bytes), for a cache key that
  is known before calibrating.
- ``apply_fp8_simulation(module, scales) -> module``: IN PLACE, swaps every Linear named in ``scales`` for an
  ``Fp8SimulatedLinear`` sharing the same Parameters (state_dict keys unchanged); other layers are untouched.
  ``copy.deepcopy`` the module first to keep the fp32 reference. Forward hooks on swapped layers are not carried.
- ``measure_simulation_accuracy(module, scales, batches, name) -> ComponentAccuracy``: relative L2 and cosine of
  the simulated module's outputs against ``module``'s (all floating outputs of all batches, flattened together).
- ``insert_qdq(model_or_path, scales, out_path=None) -> onnx.ModelProto``: for a graph exported with
  ``torch.onnx.export(..., dynamo=True)`` (opset >= 19), puts QuantizeLinear -> DequantizeLinear in front of the
  activation input of each MatMul/Gemm that a calibrated Linear became, and replaces its weight initializer by a
  float8e4m3fn initializer + DequantizeLinear (a Q/DQ pair when the weight is not an initializer). Linears are
  found through the node metadata ``namespace`` the dynamo exporter writes (``.../blocks.0.proj: ...Linear/linear:
  aten.linear.default``): the innermost module scope is the Linear's name. A calibrated layer that is not found
  raises. This is the graph TensorRT builds as FP8 (strongly typed network); ONNX Runtime's CPU provider runs it
  too (the float8 Q/DQ are computed, the matmul in fp32), which the tests use to check it against the simulation.

CPU vs GPU: on the CPU FP8 is only simulated (quantize-dequantize, fp32 matmul) to measure accuracy;
``torch._scaled_mm`` on the CPU is unusably slow. Real FP8 GEMMs happen in the TensorRT engine built from the Q/DQ
graph.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ArtifactError, CalibrationError, ConfigError
from ..models.weights import read_safetensors, save_safetensors
from ..video_io import atomic_output
from .accuracy import ComponentAccuracy

logger = logging.getLogger(__name__)

E4M3_MAX = 448.0  # largest finite float8_e4m3fn
SCALES_FORMAT = "foresight-fp8-scales/1"
MIN_OPSET = 19  # first opset whose QuantizeLinear/DequantizeLinear accept float8 types
# amax of an all-zero tensor: keeps the scale positive (x / 0 would be nan) without changing any value
_TINY_AMAX = float(np.finfo(np.float32).tiny) * E4M3_MAX

Batch = Any  # tuple of positional args | dict of keyword args | one tensor


def fp8_scale(amax: float) -> float:
    """Per-tensor scale for ``amax``, as the float32 value both the simulation and the ONNX graph use."""
    return float(np.float32(max(amax, _TINY_AMAX)) / np.float32(E4M3_MAX))


def quantize_fp8(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x / scale`` saturated and rounded (nearest-even) to float8_e4m3fn."""
    s = torch.tensor(scale, dtype=torch.float32, device=x.device)
    return (x.to(torch.float32) / s).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def quantize_dequantize(x: torch.Tensor, scale: float) -> torch.Tensor:
    """FP8 round trip of ``x`` (same dtype out as in)."""
    s = torch.tensor(scale, dtype=torch.float32, device=x.device)
    return (quantize_fp8(x, scale).to(torch.float32) * s).to(x.dtype)


@dataclass(frozen=True)
class Fp8Scales:
    """Calibration result: ``amax[layer_name] = (input_amax, weight_amax)``, float32 values, sorted by name."""

    amax: Mapping[str, tuple[float, float]]

    def __post_init__(self) -> None:
        clean = {}
        for name, pair in sorted(self.amax.items()):
            if not isinstance(name, str):
                raise CalibrationError(f"FP8 scale layer names must be strings, got {name!r}")
            values = tuple(float(np.float32(v)) for v in pair) if isinstance(pair, (tuple, list)) else ()
            if len(values) != 2 or not all(math.isfinite(v) and v >= 0 for v in values):
                raise CalibrationError(f"FP8 amax of {name!r} must be two finite values >= 0, got {pair!r}")
            clean[name] = values
        object.__setattr__(self, "amax", MappingProxyType(clean))

    def __hash__(self) -> int:
        return hash(self.digest())

    def __len__(self) -> int:
        return len(self.amax)

    def __contains__(self, name: object) -> bool:
        return name in self.amax

    def input_scale(self, name: str) -> float:
        return fp8_scale(self.amax[name][0])

    def weight_scale(self, name: str) -> float:
        return fp8_scale(self.amax[name][1])

    def digest(self) -> str:
        # float.hex is exact, so equal scales <=> equal digest
        content = json.dumps([[n, a.hex(), w.hex()] for n, (a, w) in self.amax.items()])
        return "sha256:" + hashlib.sha256(f"{SCALES_FORMAT}\n{content}".encode()).hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write ``.safetensors`` or ``.json`` (chosen by suffix) atomically; returns the path."""
        path = Path(path)
        with atomic_output(path) as tmp:
            if path.suffix == ".safetensors":
                tensors = {n: torch.tensor(v, dtype=torch.float32) for n, v in self.amax.items()}
                save_safetensors(tensors, tmp, metadata={"format": SCALES_FORMAT, "digest": self.digest()})
            elif path.suffix == ".json":
                amax = {n: list(v) for n, v in self.amax.items()}
                doc = {"format": SCALES_FORMAT, "digest": self.digest(), "amax": amax}
                tmp.write_text(json.dumps(doc, indent=1))
            else:
                raise ConfigError(f"FP8 scales are saved as .safetensors or .json, got {path}")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Fp8Scales:
        path = Path(path)
        if path.suffix == ".json":
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ArtifactError(f"rebuild needed: cannot read FP8 scales {path}: {exc}") from exc
            if not isinstance(doc, dict):
                raise ArtifactError(f"rebuild needed: {path} is not an FP8 scales document")
            meta, amax = doc, doc.get("amax", {})
        else:
            # read_safetensors refuses anything that is not .safetensors
            tensors, meta = read_safetensors(path)
            amax = {n: t.tolist() for n, t in tensors.items()}
        if meta.get("format") != SCALES_FORMAT:
            raise ArtifactError(f"rebuild needed: {path} has format {meta.get('format')!r}, expected {SCALES_FORMAT!r}")
        scales = cls(amax)
        if scales.digest() != meta.get("digest"):
            raise ArtifactError(f"rebuild needed: FP8 scales {path} do not match their digest (file changed)")
        return scales


def _tensors_of(x: Any) -> list[torch.Tensor]:
    """Floating tensors in a (nested) output: tensor, tuple/list, dict or ModelOutput, in order."""
    if isinstance(x, torch.Tensor):
        return [x] if x.is_floating_point() else []
    if isinstance(x, Mapping):
        return [t for v in x.values() for t in _tensors_of(v)]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in _tensors_of(v)]
    return []


def _run(module: nn.Module, batch: Batch) -> Any:
    if isinstance(batch, Mapping):
        return module(**batch)
    if isinstance(batch, (tuple, list)):
        return module(*batch)
    return module(batch)


def _hash_value(h, x: Any) -> None:
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-d too
    elif isinstance(x, np.ndarray):
        h.update(f"A{x.dtype}{x.shape}".encode())
        h.update(np.ascontiguousarray(x).tobytes())
    elif isinstance(x, Mapping):
        h.update(b"{")
        for k in sorted(x):
            h.update(repr(k).encode())
            _hash_value(h, x[k])
        h.update(b"}")
    elif isinstance(x, (tuple, list)):
        h.update(b"[")
        for v in x:
            _hash_value(h, v)
        h.update(b"]")
    elif x is None or isinstance(x, (bool, int, float, str)):
        h.update(f"{type(x).__name__}:{x!r}".encode())
    else:
        raise CalibrationError(f"cannot hash calibration value of type {type(x).__name__}")


def batches_digest(batches: Iterable[Batch]) -> str:
    """sha256 of a calibration set: every tensor's dtype, shape and bytes, in order."""
    h = hashlib.sha256()
    for batch in batches:
        _hash_value(h, batch)
        h.update(b"|")
    return "sha256:" + h.hexdigest()


def _targeted(module: nn.Module, targets, skip) -> dict[str, nn.Linear]:
    return {
        name: m
        for name, m in module.named_modules()
        if isinstance(m, targets) and not (skip is not None and skip(name, m))
    }


def calibrate(
    module: nn.Module,
    batches: Iterable[Batch],
    *,
    targets: type[nn.Module] | tuple[type[nn.Module], ...] = nn.Linear,
    skip: Callable[[str, nn.Module], bool] | None = None,
) -> Fp8Scales:
    """Per-tensor amax of each targeted layer's input (max over all calls and batches) and of its weight."""
    layers = _targeted(module, targets, skip)
    if not layers:
        raise CalibrationError(f"no {targets} layer left to calibrate in {type(module).__name__} (after skip)")
    input_amax: dict[str, float] = {}

    def recorder(name: str):
        def pre_hook(layer, args, kwargs):
            x = args[0] if args else kwargs["input"]
            amax = x.detach().abs().amax().item() if x.numel() else 0.0
            if not math.isfinite(amax):
                raise CalibrationError(f"non-finite input activation (amax={amax}) at layer {name!r} in calibration")
            input_amax[name] = max(input_amax.get(name, 0.0), amax)

        return pre_hook

    handles = [m.register_forward_pre_hook(recorder(n), with_kwargs=True) for n, m in layers.items()]
    n_batches = 0
    try:
        with torch.no_grad():
            for batch in batches:
                _run(module, batch)
                n_batches += 1
    finally:
        for h in handles:
            h.remove()
    if n_batches == 0:
        raise CalibrationError("the calibration set is empty: give at least one batch")
    unreached = sorted(set(layers) - set(input_amax))
    if unreached:
        logger.warning("FP8 calibration: %d layer(s) never ran and stay unquantized: %s", len(unreached), unreached)
    with torch.no_grad():
        return Fp8Scales({n: (input_amax[n], layers[n].weight.detach().abs().amax().item()) for n in input_amax})


class Fp8SimulatedLinear(nn.Linear):
    """``nn.Linear`` computing ``linear(qdq(x, input_scale), qdq(W, weight_scale), b)`` with e4m3fn round trips."""

    input_scale: float
    weight_scale: float

    @classmethod
    def wrap(cls, linear: nn.Linear, input_scale: float, weight_scale: float) -> Fp8SimulatedLinear:
        """A simulated layer sharing ``linear``'s Parameters (no copy)."""
        new = cls(linear.in_features, linear.out_features, bias=False, device="meta")
        new.weight = linear.weight
        new.register_parameter("bias", linear.bias)
        new.train(linear.training)
        new.input_scale, new.weight_scale = input_scale, weight_scale
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = quantize_dequantize(self.weight, self.weight_scale)
        return F.linear(quantize_dequantize(x, self.input_scale), w, self.bias)

    def extra_repr(self) -> str:
        scales = f"input_scale={self.input_scale:.4g}, weight_scale={self.weight_scale:.4g}"
        return f"{super().extra_repr()}, fp8_e4m3fn {scales}"


def apply_fp8_simulation(module: nn.Module, scales: Fp8Scales) -> nn.Module:
    """Swap (in place) every Linear named in ``scales`` for an ``Fp8SimulatedLinear``; returns ``module``.

    (When ``module`` itself is the only calibrated Linear, named "", the wrapped layer is returned instead.)
    """
    modules = dict(module.named_modules())
    bad = [n for n in scales.amax if n not in modules or type(modules[n]).forward is not nn.Linear.forward]
    if bad:
        raise CalibrationError(f"FP8 scales name layers that are not plain nn.Linear modules of this model: {bad}")
    for name in scales.amax:
        sim = Fp8SimulatedLinear.wrap(modules[name], scales.input_scale(name), scales.weight_scale(name))
        if name == "":
            return sim
        parent, _, child = name.rpartition(".")
        setattr(module.get_submodule(parent), child, sim)
    return module


def measure_simulation_accuracy(
    module: nn.Module, scales: Fp8Scales, batches: Iterable[Batch], name: str = "component"
) -> ComponentAccuracy:
    """Relative L2 and cosine of the FP8-simulated copy of ``module`` against ``module`` itself."""
    simulated = apply_fp8_simulation(copy.deepcopy(module), scales)
    actual, reference = [], []
    with torch.no_grad():
        for batch in batches:
            reference += [t.reshape(-1) for t in _tensors_of(_run(module, batch))]
            actual += [t.reshape(-1) for t in _tensors_of(_run(simulated, batch))]
    if not reference:
        raise CalibrationError(f"{name}: no floating-point output to compare (empty batches?)")
    return ComponentAccuracy.measure(name, torch.cat(actual), torch.cat(reference))


# ---- ONNX -------------------------------------------------------------------------------------------------------


def _linear_name(node) -> str | None:
    """The innermost module scope of a node exported by the dynamo exporter (None without metadata)."""
    namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), None)
    if namespace is None:
        return None
    scopes = namespace.split("/")  # "<path>: <class>" per module scope, then "<node>: <aten op>"
    return scopes[-2].split(": ")[0] if len(scopes) >= 2 else None


def insert_qdq(model_or_path, scales: Fp8Scales, out_path: str | Path | None = None):
    """Q/DQ (float8e4m3fn) in front of the MatMul/Gemm of every Linear in ``scales``; returns the new ModelProto.

    With ``out_path`` the model is also saved there (temp file + rename; tensors go to ``<name>.data`` next to it
    when the model is too large for one protobuf).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(model_or_path)) if isinstance(model_or_path, (str, Path)) else copy.deepcopy(model_or_path)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ConfigError(f"float8 Q/DQ needs ONNX opset >= {MIN_OPSET}, the model has opset {opset}: export again")
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for i in node.input:
            consumers[i] = consumers.get(i, 0) + 1

    zero_point = "fp8_zero_point"
    graph.initializer.append(helper.make_tensor(zero_point, TensorProto.FLOAT8E4M3FN, [], [0.0]))
    found: set[str] = set()
    new_nodes = []
    for node in graph.node:
        layer = _linear_name(node) if node.op_type in ("MatMul", "Gemm") else None
        if layer is None or layer not in scales:
            new_nodes.append(node)
            continue
        found.add(layer)
        act, weight = node.input[0], node.input[1]
        w_init = inits.get(weight)
        # scales use the weights' dtype (QuantizeLinear wants x and scale of one type)
        float_type = w_init.data_type if w_init is not None else TensorProto.FLOAT
        tag = f"{node.name}.fp8"
        for role, scale in (("input", scales.input_scale(layer)), ("weight", scales.weight_scale(layer))):
            graph.initializer.append(
                numpy_helper.from_array(np.array(scale, dtype=helper.tensor_dtype_to_np_dtype(float_type)),
                                        f"{tag}.{role}_scale")
            )
        new_nodes += [
            helper.make_node("QuantizeLinear", [act, f"{tag}.input_scale", zero_point], [f"{tag}.input_q"],
                             name=f"{tag}.input_quantize", saturate=1),
            helper.make_node("DequantizeLinear", [f"{tag}.input_q", f"{tag}.input_scale", zero_point],
                             [f"{tag}.input_dq"], name=f"{tag}.input_dequantize"),
        ]
        if w_init is not None:
            # store the weight itself in float8, quantized by the same torch code as the simulation
            w = torch.from_numpy(numpy_helper.to_array(w_init).astype(np.float32))
            q = quantize_fp8(w, scales.weight_scale(layer))
            q_init = helper.make_tensor(f"{tag}.weight_fp8", TensorProto.FLOAT8E4M3FN, list(q.shape),
                                        q.view(torch.uint8).numpy().tobytes(), raw=True)
            graph.initializer.append(q_init)
            new_nodes.append(helper.make_node("DequantizeLinear", [q_init.name, f"{tag}.weight_scale", zero_point],
                                              [f"{tag}.weight_dq"], name=f"{tag}.weight_dequantize"))
            consumers[weight] -= 1
            if consumers[weight] == 0:
                graph.initializer.remove(w_init)
        else:
            new_nodes += [
                helper.make_node("QuantizeLinear", [weight, f"{tag}.weight_scale", zero_point], [f"{tag}.weight_q"],
                                 name=f"{tag}.weight_quantize", saturate=1),
                helper.make_node("DequantizeLinear", [f"{tag}.weight_q", f"{tag}.weight_scale", zero_point],
                                 [f"{tag}.weight_dq"], name=f"{tag}.weight_dequantize"),
            ]
        node.input[0], node.input[1] = f"{tag}.input_dq", f"{tag}.weight_dq"
        new_nodes.append(node)
    missing = sorted(set(scales.amax) - found)
    if missing:
        raise CalibrationError(
            f"no MatMul/Gemm in the ONNX graph for calibrated layer(s) {missing} "
            "(export with torch.onnx.export(..., dynamo=True) so nodes carry their module path)"
        )
    del graph.node[:]
    graph.node.extend(new_nodes)
    large = sum(len(t.raw_data) for t in graph.initializer) > 1_800_000_000  # protobuf's 2 GiB limit
    if not large:
        onnx.checker.check_model(model)
    if out_path is not None:
        out_path = Path(out_path)
        with atomic_output(out_path) as tmp:
            onnx.save_model(model, str(tmp), save_as_external_data=large, all_tensors_to_one_file=True,
                            location=f"{out_path.name}.data")
    return model
