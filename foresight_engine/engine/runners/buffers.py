"""A built stage's I/O buffer plan: every input and output tensor's name, dtype and (min, opt, max) shape.

Builders compute it on the CPU when they export a stage (`BufferPlan.for_stage`: the input side from the stage's
`ExportSpec` profile, the output side by running the stage wrapper under fake tensors at each profile point) and
store it in the stage's manifest entry; the exported graph must match it (tested on the CPU), and the GPU runners
allocate from it: one flat device buffer per tensor, sized for its `max` shape, allocated ONCE at load (TensorRT
demoDiffusion's pattern). A call views the first `numel` elements of each buffer in the call's shape, so buffer
addresses never change between calls (they are bound once, and stay valid inside a captured CUDA graph).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ...errors import ArtifactError
from ...models.export_spec import BuildShape, ExportSpec

Shape = tuple[int, ...]
POINTS = ("min", "opt", "max")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ArtifactError(f"rebuild needed: unknown tensor dtype {name!r} in a buffer plan")
    return dtype


@dataclass(frozen=True)
class TensorPlan:
    """One I/O tensor: its dtype and its shape at the profile's min, opt and max points."""

    name: str
    dtype: str  # torch dtype name ("float32", "bfloat16", "int64", ...)
    min: Shape
    opt: Shape
    max: Shape

    @property
    def torch_dtype(self) -> torch.dtype:
        return parse_dtype(self.dtype)

    @property
    def dynamic(self) -> bool:
        return self.min != self.max

    @property
    def max_numel(self) -> int:
        return math.prod(self.max)

    def shape(self, point: str) -> Shape:
        return getattr(self, point)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "min": list(self.min), "opt": list(self.opt),
                "max": list(self.max)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TensorPlan":
        return cls(data["name"], data["dtype"], *(tuple(data[p]) for p in POINTS))


@dataclass(frozen=True)
class BufferPlan:
    inputs: tuple[TensorPlan, ...]
    outputs: tuple[TensorPlan, ...]

    @property
    def dynamic(self) -> bool:
        return any(t.dynamic for t in (*self.inputs, *self.outputs))

    @property
    def tensors(self) -> tuple[TensorPlan, ...]:
        return (*self.inputs, *self.outputs)

    def to_dict(self) -> dict[str, Any]:
        """Lists, not mappings: the order is the call order (and the manifest is written with sorted keys)."""
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BufferPlan":
        try:
            return cls(tuple(TensorPlan.from_dict(d) for d in data["inputs"]),
                       tuple(TensorPlan.from_dict(d) for d in data["outputs"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"rebuild needed: malformed buffer plan ({type(exc).__name__}: {exc})") from None

    @classmethod
    def for_stage(cls, spec: ExportSpec, module: torch.nn.Module, shape: BuildShape,
                  cache_dtype: torch.dtype = torch.float32) -> "BufferPlan":
        """The plan of stage `spec` wrapped as `module` (its build precision) at build `shape`: input dtypes from
        its sample inputs, input shapes from its profile, output dtypes and shapes from running `module` on fake
        inputs at each profile point (no memory, no FLOPs)."""
        samples = spec.sample_inputs(shape, cache_dtype=cache_dtype)
        profile = spec.profile(shape)
        dtypes = [x.dtype for x in samples]
        out_shapes: dict[str, list[Shape]] = {}
        out_dtypes: dict[str, torch.dtype] = {}
        for point in range(3):
            shapes = [profile[name][point] for name in spec.input_names]
            for name, (dtype, shape_) in zip(spec.output_names, _fake_outputs(module, samples, shapes, dtypes)):
                out_shapes.setdefault(name, []).append(shape_)
                out_dtypes[name] = dtype
        inputs = tuple(TensorPlan(name, dtype_name(dtype), *(tuple(s) for s in profile[name]))
                       for name, dtype in zip(spec.input_names, dtypes))
        outputs = tuple(TensorPlan(name, dtype_name(out_dtypes[name]), *out_shapes[name]) for name in spec.output_names)
        return cls(inputs, outputs)

    def mismatches(self, io: Iterable[tuple[str, bool, str, Shape]]) -> list[str]:
        """What differs between this plan and a built graph's I/O, given as (name, is_input, dtype name, shape with
        -1 for a dynamic dimension): names, directions, dtypes, static dimensions. Empty when they match."""
        io = list(io)
        problems = []
        want = {t.name: (True, t) for t in self.inputs} | {t.name: (False, t) for t in self.outputs}
        got = {name: (is_input, dtype, shape) for name, is_input, dtype, shape in io}
        for name in sorted(set(want) ^ set(got)):
            problems.append(f"{name!r} is {'in the plan only' if name in want else 'in the built graph only'}")
        for name in sorted(set(want) & set(got)):
            is_input, plan = want[name]
            got_input, dtype, shape = got[name]
            if got_input != is_input:
                problems.append(f"{name!r} is an {'input' if is_input else 'output'} in the plan, not in the graph")
            if dtype != plan.dtype:
                problems.append(f"{name!r} has dtype {dtype} in the built graph, {plan.dtype} in the plan")
            if len(shape) != len(plan.max):
                problems.append(f"{name!r} has rank {len(shape)} in the built graph, {len(plan.max)} in the plan")
                continue
            for axis, (dim, lo, hi) in enumerate(zip(shape, plan.min, plan.max)):
                if lo == hi and dim != lo:
                    problems.append(f"{name!r} dim {axis} is {dim} in the built graph, fixed at {lo} in the plan")
                if lo != hi and dim != -1:
                    problems.append(f"{name!r} dim {axis} is fixed at {dim} in the built graph, {lo}..{hi} in the plan")
        return problems

    def check(self, io: Iterable[tuple[str, bool, str, Shape]], what: str) -> None:
        problems = self.mismatches(io)
        if problems:
            raise ArtifactError(f"rebuild needed: {what} does not match its buffer plan: " + "; ".join(problems))

    def allocate(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """One flat buffer per tensor, `max` elements long (at least one: a bound address is never null)."""
        return {t.name: torch.empty(max(t.max_numel, 1), dtype=t.torch_dtype, device=device) for t in self.tensors}


def view(buffer: torch.Tensor, shape: Shape) -> torch.Tensor:
    """The first elements of a flat `buffer` as a contiguous tensor of `shape` (same address at every shape)."""
    return buffer[: math.prod(shape)].view(shape)


def _fake_outputs(module: torch.nn.Module, samples: tuple[torch.Tensor, ...], shapes: list[Shape],
                  dtypes: list[torch.dtype]) -> list[tuple[torch.dtype, Shape]]:
    with FakeTensorMode(allow_non_fake_inputs=True) as mode, torch.inference_mode():
        inputs = []
        for sample, shape, dtype in zip(samples, shapes, dtypes):
            if tuple(sample.shape) == tuple(shape):
                inputs.append(mode.from_tensor(sample))  # index tables etc.: their values stay meaningful
            else:
                inputs.append(torch.zeros(shape, dtype=dtype))
        outputs = module(*inputs)
    outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    return [(o.dtype, tuple(o.shape)) for o in outputs]


__all__ = ["BufferPlan", "POINTS", "TensorPlan", "dtype_name", "parse_dtype", "view"]
