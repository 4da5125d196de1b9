"""Writing ONNX graphs without duplicated weights.

A graph over protobuf's 2 GiB limit keeps its tensors in an external data file. `onnx.save_model(...,
save_as_external_data=True)` APPENDS to that file when it already exists, and the offsets it records point at the
new copy: every re-save (e.g. after inserting Q/DQ nodes) would leave a dead copy of every weight behind (~15 GB per
re-save of a 7B backbone in bf16, hashed again at every artifact load). `save_onnx` always writes a FRESH data file:
model and data are written into a new temporary directory, then moved into place (data first, the graph last), so
a re-save replaces both and a killed write leaves the old pair intact.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

PROTOBUF_LIMIT = 1_800_000_000  # bytes of tensor data above which a graph keeps them in an external file


def data_file(path: str | Path) -> Path:
    """The external data file of the graph at `path` (`<name>.data` next to it)."""
    path = Path(path)
    return path.with_name(f"{path.name}.data")


def tensor_bytes(model) -> int:
    """Bytes of the graph's initializer data (raw or typed fields)."""
    from onnx import numpy_helper
    total = 0
    for tensor in model.graph.initializer:
        total += len(tensor.raw_data) if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).nbytes
    return total


# ONNX tensor element types -> torch dtype names (those of `engine/runners/buffers.py`)
_ELEMENT_TYPES = {1: "float32", 10: "float16", 16: "bfloat16", 11: "float64", 7: "int64", 6: "int32", 3: "int8",
                  2: "uint8", 9: "bool", 17: "float8_e4m3fn"}


def graph_io(model) -> list[tuple[str, bool, str, tuple[int, ...]]]:
    """The graph's inputs and outputs as (name, is_input, torch dtype name, shape with -1 for symbolic dims): what
    a stage's buffer plan is checked against (`BufferPlan.check`)."""
    def entry(value, is_input: bool):
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        return value.name, is_input, _ELEMENT_TYPES.get(tensor.elem_type, f"onnx:{tensor.elem_type}"), shape
    return [entry(v, True) for v in model.graph.input] + [entry(v, False) for v in model.graph.output]


def save_onnx(model, path: str | Path, *, external_threshold: int | None = None) -> Path:
    """Write `model` to `path`, with its tensors in a fresh `<name>.data` when they exceed `external_threshold`
    bytes (default `PROTOBUF_LIMIT`; no stale data file is left behind when they do not). Returns `path`. Like
    `onnx.save_model`, it moves the tensors of an external save out of `model` (into the file)."""
    import onnx
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    external = tensor_bytes(model) > (PROTOBUF_LIMIT if external_threshold is None else external_threshold)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        # a new, empty directory: onnx writes the data file from scratch, never appending to an old one
        onnx.save_model(model, str(staging / path.name), save_as_external_data=external,
                        all_tensors_to_one_file=True, location=data_file(path).name, size_threshold=0)
        if external:
            os.replace(staging / data_file(path).name, data_file(path))
        else:
            data_file(path).unlink(missing_ok=True)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


__all__ = ["PROTOBUF_LIMIT", "data_file", "graph_io", "save_onnx", "tensor_bytes"]
