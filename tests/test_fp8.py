"""FP8 calibration, CPU simulation and ONNX Q/DQ, on the tiny preset's conditioning adapter."""
import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from foresight_engine.builders.accuracy import cosine, relative_l2
from foresight_engine.builders.fp8 import (
    Fp8Scales,
    Fp8SimulatedLinear,
    apply_fp8_simulation,
    batches_digest,
    calibrate,
    insert_qdq,
    measure_simulation_accuracy,
    quantize_dequantize,
)
from foresight_engine.config import preset
from foresight_engine.errors import ArtifactError, CalibrationError
from foresight_engine.models.adapter import ConditioningAdapter



def skip_head(name: str, layer: nn.Module) -> bool:
    return name == "proj_out"  # policy: the output projection stays in high precision


@pytest.fixture(scope="module")
def adapter() -> ConditioningAdapter:
    config = preset("tiny")
    torch.manual_seed(0)
    return ConditioningAdapter(config.adapter, config.text.hidden_size, config.decoder.conditioning_channels).eval()


def _latents(adapter, seed: int, n: int = 3) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    q, d = 4, adapter.latent_in.in_features
    return [(torch.randn(1, q, d, generator=g) * 3,) for _ in range(n)]


@pytest.fixture(scope="module")
def scales(adapter) -> Fp8Scales:
    return calibrate(adapter, _latents(adapter, 0), skip=skip_head)


def test_quantize_dequantize_rounds_to_e4m3_and_saturates():
    x = torch.tensor([0.1, 0.5, -3.3, 448.0, 1000.0, -1e9, 0.0])
    # e4m3 keeps 3 mantissa bits: 0.1 -> 1.625 * 2^-4, -3.3 -> -1.625 * 2^1; beyond 448 saturates
    expected = torch.tensor([0.1015625, 0.5, -3.25, 448.0, 448.0, -448.0, 0.0])
    assert torch.equal(quantize_dequantize(x, 1.0), expected)
    assert torch.equal(quantize_dequantize(x * 0.5, 0.5), expected * 0.5)


def test_calibration_is_deterministic_and_keyed_by_the_data(adapter, scales):
    again = calibrate(adapter, _latents(adapter, 0), skip=skip_head)
    other = calibrate(adapter, _latents(adapter, 1), skip=skip_head)
    assert again == scales and again.digest() == scales.digest()
    assert other.digest() != scales.digest()
    assert batches_digest(_latents(adapter, 0)) == batches_digest(_latents(adapter, 0))
    assert batches_digest(_latents(adapter, 0)) != batches_digest(_latents(adapter, 1))
    # the first Linear sees the raw latents: its input amax is the max |x| over the whole set
    direct = max(x.abs().max().item() for (x,) in _latents(adapter, 0))
    assert scales.amax["latent_in"][0] == pytest.approx(direct, rel=0, abs=0)
    assert scales.amax["latent_in"][1] == adapter.latent_in.weight.abs().max().item()
    linears = {n for n, m in adapter.named_modules() if isinstance(m, nn.Linear)}
    assert set(scales.amax) == linears - {"proj_out"}


def test_calibration_rejects_empty_set(adapter):
    with pytest.raises(CalibrationError, match="empty"):
        calibrate(adapter, [])


@pytest.mark.parametrize("suffix", [".safetensors", ".json"])
def test_scales_round_trip_and_tamper(tmp_path, scales, suffix):
    path = scales.save(tmp_path / f"scales{suffix}")
    assert Fp8Scales.load(path) == scales
    if suffix == ".json":
        doc = json.loads(path.read_text())
        doc["amax"]["latent_in"][0] *= 2  # an edited scale, digest left as it was
        path.write_text(json.dumps(doc))
    else:
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 0x01  # flip a bit of the last stored float
        path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="rebuild needed"):
        Fp8Scales.load(path)


def test_simulation_changes_outputs_within_fp8_error_and_skips_policy_layers(adapter, scales):
    x = _latents(adapter, 2, n=1)[0]
    with torch.no_grad():
        reference = adapter(*x)[0]
        simulated_module = apply_fp8_simulation(copy.deepcopy(adapter), scales)
        simulated = simulated_module(*x)[0]
    assert type(simulated_module.proj_out) is nn.Linear  # skipped: untouched
    assert isinstance(simulated_module.latent_in, Fp8SimulatedLinear)
    assert set(simulated_module.state_dict()) == set(adapter.state_dict())
    err = relative_l2(simulated, reference)
    assert 1e-3 < err < 0.15, err  # really quantized, and within e4m3's few-percent error
    # a simulation with the weight scale off by 4x is visibly worse (the test can fail)
    bad = Fp8Scales({n: (a, w / 4) for n, (a, w) in scales.amax.items()})
    with torch.no_grad():
        worse = apply_fp8_simulation(copy.deepcopy(adapter), bad)(*x)[0]
    assert relative_l2(worse, reference) > 2 * err


def test_reported_accuracy_equals_direct_computation(adapter, scales):
    batches = _latents(adapter, 3, n=2)
    report = measure_simulation_accuracy(adapter, scales, batches, name="adapter")
    simulated_module = apply_fp8_simulation(copy.deepcopy(adapter), scales)
    with torch.no_grad():
        ref = np.concatenate([adapter(*b)[0].numpy().ravel() for b in batches]).astype(np.float64)
        sim = np.concatenate([simulated_module(*b)[0].numpy().ravel() for b in batches]).astype(np.float64)
    assert report.name == "adapter"
    assert report.relative_l2 == pytest.approx(np.linalg.norm(sim - ref) / np.linalg.norm(ref), rel=1e-9)
    assert report.cosine == pytest.approx(sim @ ref / (np.linalg.norm(sim) * np.linalg.norm(ref)), rel=1e-12)
    assert report.relative_l2 > 1e-3


def test_apply_rejects_unknown_layer(adapter):
    with pytest.raises(CalibrationError, match="blocks.9.nope"):
        apply_fp8_simulation(copy.deepcopy(adapter), Fp8Scales({"blocks.9.nope": (1.0, 1.0)}))


# ---- ONNX Q/DQ ------------------------------------------------------------------------------------------------------

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(adapter, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("fp8onnx") / "adapter.onnx"
    torch.onnx.export(adapter, _latents(adapter, 0, n=1)[0], str(path), dynamo=True,
                      input_names=["world_latent"], output_names=["conditioning", "mask"], verbose=False)
    return str(path)


def _ort(model_path: str, x: torch.Tensor) -> np.ndarray:
    options = ort.SessionOptions()
    # ORT's extended optimizations move Q/DQ across Transposes, which have no float8 CPU kernel: keep basic ones
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    return session.run(["conditioning"], {"world_latent": x.numpy()})[0]


def test_qdq_onnx_matches_simulation_in_onnxruntime(adapter, scales, exported, tmp_path):
    qdq_path = tmp_path / "adapter.fp8.onnx"
    model = insert_qdq(exported, scales, qdq_path)
    ops = [n.op_type for n in model.graph.node]
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    quantized = [n for n in matmuls if n.input[0].endswith(".input_dq")]
    # one activation Q/DQ per calibrated Linear call, float8 weights with a DequantizeLinear each
    assert ops.count("QuantizeLinear") == len(quantized) >= len(scales)
    assert ops.count("DequantizeLinear") == 2 * len(quantized)
    assert all(n.input[1].endswith(".weight_dq") for n in quantized)
    assert any("proj_out" in dict((p.key, p.value) for p in n.metadata_props)["namespace"] and n not in quantized
               for n in matmuls)  # the skipped head keeps its fp32 MatMul/Gemm
    fp8 = onnx.TensorProto.FLOAT8E4M3FN
    assert sum(t.data_type == fp8 for t in model.graph.initializer) == len(quantized) + 1  # weights + zero point

    x = _latents(adapter, 5, n=1)[0][0]
    with torch.no_grad():
        reference = adapter(x)[0].numpy()
        simulated = apply_fp8_simulation(copy.deepcopy(adapter), scales)(x)[0].numpy()
    from_onnx = _ort(str(qdq_path), x)
    assert relative_l2(from_onnx, simulated) < 1e-5
    assert cosine(from_onnx, simulated) > 1 - 1e-9
    assert relative_l2(from_onnx, reference) > 1e-3  # it is not the fp32 graph
    assert relative_l2(_ort(exported, x), reference) < 1e-5


def test_qdq_onnx_reference_evaluator_agrees(adapter, scales, exported):
    from onnx.reference import ReferenceEvaluator

    model = insert_qdq(exported, scales)
    x = _latents(adapter, 6, n=1)[0][0]
    with torch.no_grad():
        simulated = apply_fp8_simulation(copy.deepcopy(adapter), scales)(x)[0].numpy()
    out = ReferenceEvaluator(model).run(["conditioning"], {"world_latent": x.numpy()})[0]
    assert relative_l2(out, simulated) < 1e-5


def test_qdq_refuses_layer_missing_from_graph(scales, exported):
    extra = Fp8Scales({**scales.amax, "not.a.layer": (1.0, 1.0)})
    with pytest.raises(CalibrationError, match="not.a.layer"):
        insert_qdq(exported, extra)
    assert math.isfinite(scales.input_scale("latent_in"))


def test_scales_validate_values():
    with pytest.raises(CalibrationError, match="'a'"):
        Fp8Scales({"a": (-1.0, 1.0)})
    with pytest.raises(CalibrationError, match="'b'"):
        Fp8Scales({"b": (float("nan"), 1.0)})
    assert Fp8Scales({"c": (0.0, 0.0)}).input_scale("c") > 0  # an all-zero input still gets a usable scale
