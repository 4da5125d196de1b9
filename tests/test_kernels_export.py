"""Every custom op through torch.compile, torch.export and the ONNX exporter (with `onnx_translations()`), then
ONNX Runtime: one small module calls all three, so one compile and one export cover them."""
import pytest
import torch

from foresight_engine import kernels
from foresight_engine.kernels import modulation, rotary, varlen


class AllOps(torch.nn.Module):
    """x [1, S, D] -> modulated (float), its int8 quantization, rotated q/k, and varlen attention over the packed
    heads of q/k/x with window boundaries `cu_seqlens` (an input: data, not a constant of the graph)."""

    heads = 4

    def forward(self, x, scale, shift, weight, cos, sin, quant_scale, cu_seqlens):
        y = kernels.rmsnorm_modulate(x, scale, shift, 1e-6)
        y8 = kernels.rmsnorm_modulate(x, scale, shift, 1e-6, quant_scale, torch.int8)
        q, k = kernels.rmsnorm_rope(y, x, weight, weight, cos, sin, 1e-5)
        per_head = lambda t: t[0].unflatten(-1, (self.heads, -1))  # [S, H, d]  # noqa: E731
        out = kernels.varlen_attention(per_head(q), per_head(k), per_head(x), cu_seqlens, 12)
        return y, y8, q, k, out


def _inputs(seed=0, cu=(0, 5, 17, 20)):
    g = torch.Generator().manual_seed(seed)
    s, d = 20, 32
    angles = torch.rand(1, s, d // 2, generator=g) * 6.3
    return (torch.randn(1, s, d, generator=g), torch.randn(1, s, d, generator=g) * 0.2,
            torch.randn(1, 1, d, generator=g), torch.randn(d, generator=g), angles.cos(), angles.sin(),
            torch.tensor(0.02), torch.tensor(cu, dtype=torch.int32))


def _reference(x, scale, shift, weight, cos, sin, quant_scale, cu_seqlens):
    y = modulation.reference(x, scale, shift, 1e-6)
    y8 = modulation.reference(x, scale, shift, 1e-6, quant_scale, torch.int8)
    q, k = rotary.reference(y, x, weight, weight, cos, sin, 1e-5)
    per_head = lambda t: t[0].unflatten(-1, (4, -1))  # noqa: E731
    return y, y8, q, k, varlen.reference(per_head(q), per_head(k), per_head(x), cu_seqlens, 12)


def _check(got, want):
    for g, w in zip(got, want):
        g = torch.as_tensor(g)
        if w.dtype == torch.int8:  # ties may round one level apart after fp32 reordering
            assert (g.to(torch.int16) - w.to(torch.int16)).abs().max() <= 1 and (g != w).float().mean() < 0.01
        else:
            torch.testing.assert_close(g.float(), w.float(), rtol=1e-5, atol=1e-5)


def test_ops_compile_fullgraph_and_export():
    model, inputs = AllOps().eval(), _inputs()
    with torch.inference_mode():
        compiled = torch.compile(model, fullgraph=True, dynamic=False)
        _check(compiled(*inputs), _reference(*inputs))
    exported = torch.export.export(model, inputs)
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert {"foresight.rmsnorm_modulate.default", "foresight.rmsnorm_rope.default",
            "foresight.varlen_attention.default"} <= targets
    other = _inputs(seed=1, cu=(0, 12, 13, 20))  # window layout is data: new boundaries, same program
    _check(exported.module()(*other), _reference(*other))


def test_ops_export_to_standard_onnx_and_run_in_onnxruntime(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model, inputs = AllOps().eval(), _inputs()
    names = ["x", "scale", "shift", "weight", "cos", "sin", "quant_scale", "cu_seqlens"]
    path = tmp_path / "ops.onnx"
    torch.onnx.export(model, inputs, str(path), dynamo=True, input_names=names, opset_version=20,
                      custom_translation_table=kernels.onnx_translations(), external_data=False)
    graph = onnx.load(str(path)).graph
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}  # standard ops only: TensorRT needs no plugin
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seed, cu in ((0, (0, 5, 17, 20)), (1, (0, 12, 13, 20)), (2, (0, 8, 8, 20))):
        feed = _inputs(seed, cu)
        _check(session.run(None, {n: t.numpy() for n, t in zip(names, feed)}), _reference(*feed))
