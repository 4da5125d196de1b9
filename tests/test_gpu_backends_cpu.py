"""The GPU backends (tensorrt, torch-tensorrt) on the CPU: everything up to the GPU call is real and checked here.

- the vision tower with host-computed window layouts (equal to transformers' own tower; exports with fixed shapes);
- the ONNX graphs TensorRT builds from, in bf16 and FP8 (Linears + attention Q/DQ), against the buffer plan the
  runner allocates from (names, dtypes, static dims), and the optimization profile (`opt` at the request shape);
- the torch.export programs Torch-TensorRT compiles: saved and reloaded (torch.export.save/load) equal to eager;
- FP8 attention: the Q/DQ graph in ONNX Runtime equals the CPU simulation; ModelOpt's calibration equals ours;
- external data: a re-saved graph never grows its data file.
Only the GPU calls are replaced (a placeholder plan file, the eager stage standing in for the engine): what a GPU
owner runs for real is `make gpu-check` (tests/test_gpu_acceptance.py).
"""
import copy
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from foresight_engine import kernels
from foresight_engine.artifact import StageEntry
from foresight_engine.builders import exporters, fp8, modelopt_fp8, plan as build_plan
from foresight_engine.builders import tensorrt as trt_build
from foresight_engine.builders import torch_tensorrt as torch_trt_build
from foresight_engine.builders.accuracy import relative_l2
from foresight_engine.builders.fp8_attention import (CUSTOM_TRANSLATIONS, AttentionScales, Fp8AttentionStage,
                                                     record_attention)
from foresight_engine.builders.onnx_io import data_file, graph_io, save_onnx
from foresight_engine.builders.plan import resolve_plan
from foresight_engine.builders.quantization import calibrate_stage
from foresight_engine.config import preset
from foresight_engine.engine.runners import tensorrt as trt_runner
from foresight_engine.engine.runners import torch_tensorrt as torch_trt_runner
from foresight_engine.engine.runners.buffers import BufferPlan
from foresight_engine.models.export_spec import PROMPT_TEXT_TOKENS, BuildShape, export_specs
from foresight_engine.models.glp import GLPModel
from foresight_engine.models.stages import VisionStage
from foresight_engine.models.vision_tower import VisionLayout, image_grid
from foresight_engine.precision import PrecisionPolicy, apply_policy

H100 = {"type": "cuda", "name": "NVIDIA H100 80GB HBM3", "sm": "9.0"}  # the build's target, recorded in the key


def _ort(path, quantized: bool = False):
    options = ort.SessionOptions()
    if quantized:  # float8 Q/DQ: ORT's extended optimizations move them onto ops without float8 CPU kernels
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), options)


# ------------------------------------------------------------------------------------------------ vision tower
@pytest.mark.parametrize("grid", [(1, 2, 4), (1, 8, 12), (1, 16, 20), (2, 4, 6)])
def test_vision_tower_with_host_layout_equals_transformers(tiny, grid):
    """Windows (several per image at 16x20 patches), frames (t=2: a video's two frames) and the rotary table all
    come from the host; the result is transformers' own tower's, bit for bit."""
    tower = tiny.vision_tower
    layout = VisionLayout.of(tiny.config.vision, grid)
    pixels = torch.randn(layout.patches, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = tower.visual(pixels, grid_thw=torch.tensor([grid])).pooler_output
        got = VisionStage.for_layout(tower, layout)(pixels, *layout.tensors())
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    windows = len(layout.cu_window_seqlens) - 1
    assert windows == {(1, 2, 4): 1, (1, 8, 12): 2, (1, 16, 20): 6, (2, 4, 6): 2}[grid]


def test_vision_stage_exports_with_fixed_shapes_for_a_many_window_grid(tiny, tmp_path):
    layout = VisionLayout.of(tiny.config.vision, (1, 16, 20))
    stage = VisionStage.for_layout(tiny.vision_tower, layout).eval()
    inputs = (torch.randn(layout.patches, 3 * 2 * 14 * 14), *layout.tensors())
    names = ["pixel_values", *VisionLayout.TENSORS]
    with exporters._quiet("onnx_ir", "onnxscript"):  # the attention op (wired on the CPU) -> standard ops
        torch.onnx.export(stage, inputs, str(tmp_path / "vision.onnx"), input_names=names, dynamo=True,
                          opset_version=20, custom_translation_table=kernels.onnx_translations())
    graph = onnx.load(str(tmp_path / "vision.onnx"))
    assert all(-1 not in shape for *_, shape in graph_io(graph))  # every dimension fixed
    assert not {n.op_type for n in graph.graph.node} & {"Loop", "If", "NonZero"}  # no data-dependent control
    fresh = (torch.randn(layout.patches, 3 * 2 * 14 * 14), *layout.tensors())
    got = _ort(tmp_path / "vision.onnx").run(None, {n: x.numpy() for n, x in zip(names, fresh)})[0]
    with torch.inference_mode():
        assert relative_l2(got, stage(*fresh)) < 1e-5


def test_prefill_opt_is_the_built_request(tiny):
    """The prefill's TensorRT `opt` is the request a build is for: its images' visual tokens + the text."""
    full = BuildShape.for_config(preset("full"))
    _, h, w = image_grid(preset("full"), 512, 768)
    assert full.prompt_tokens == h * w // 4 + PROMPT_TEXT_TOKENS == 279  # 26x38 patches at 448^2 pixels max
    two = BuildShape.for_config(tiny.config, images=2)
    assert two.prompt_tokens == 2 * 4 + PROMPT_TEXT_TOKENS  # tiny: 4x4 patches, 4 visual tokens per image


# ------------------------------------------------------------------- tensorrt: graphs, plans, profiles (no GPU)
@pytest.fixture(scope="module")
def tensorrt_stages(tiny, shape, tmp_path_factory):
    """The tensorrt exporter's real work on the CPU for a bf16 build with an FP8 denoising step (Linears and
    attention): graphs, buffer plans, profiles. The GPU calls are replaced: `build_engine` writes a placeholder
    plan, the eager stage stands in for the engine, the target device is an H100."""
    out = tmp_path_factory.mktemp("trt")
    patch = pytest.MonkeyPatch()
    built = {}

    def build_engine(onnx_path, config, out_path, **kwargs):
        built[str(out_path)] = config
        out_path.write_bytes(b"placeholder: built on a GPU")

    class EagerStandIn:  # what TensorRTStage is handed, without a GPU: the stage's own reference module
        def __init__(self, path, plan, device, shared_outputs=False):
            self.plan, self.shared_outputs = plan, shared_outputs
    patch.setattr(build_plan, "device_info", lambda device: H100)
    patch.setattr(trt_build, "build_engine", build_engine)
    patch.setattr(trt_runner, "TensorRTStage", EagerStandIn)
    patch.setattr(exporters, "compare", lambda job, function, device: {"checked_on": str(device)})
    try:
        policy = PrecisionPolicy.for_precision("fp8", high="bf16", fp8_attention=True)
        model = copy.deepcopy(tiny)
        apply_policy(model.components(), policy)
        plan = resolve_plan(model, "weights", "tensorrt", policy, shape, "cuda", None, ("decode", "denoise"))
        spec = export_specs(tiny.config)["denoise"]
        quantized = {"denoise": calibrate_stage(spec.wrap(model, shape).eval(),
                                                [spec.sample_inputs(shape, seed=k) for k in range(2)],
                                                policy.keep_high, calibrator="max", attention=True)}
        entries = {n: e for c in exporters.write_stages(model, plan, out, quantized).values() for n, e in c.items()}
    finally:
        patch.undo()
    return out, entries, built, plan


def test_every_graph_matches_the_runners_buffer_plan(tensorrt_stages):
    """(Every stage of an fp32 build, at every profile point, in tests/test_builders_backends.py.)"""
    out, entries, built, _ = tensorrt_stages
    for name in ("decode", "denoise"):
        entry = entries[name]
        assert entry.backend == "tensorrt" and entry.engine == f"{entry.file[:-len('.onnx')]}.plan"
        plan = BufferPlan.from_dict(entry.buffers)
        assert plan.mismatches(graph_io(onnx.load(str(out / entry.file)))) == [], name
    decode = BufferPlan.from_dict(entries["decode"].buffers)
    # bf16 weights; integer inputs as they are, the KV cache in the backbone's own dtype, fp32 logits out
    dtypes = {t.name: t.dtype for t in decode.tensors}
    assert dtypes == {"token_ids": "int64", "position": "int64", "keys": "bfloat16", "values": "bfloat16",
                      "slot": "int64", "logits": "float32", "new_keys": "bfloat16", "new_values": "bfloat16"}
    assert decode.dynamic is False  # one fixed shape: graph-capturable, no set_input_shape per call
    assert entries["denoise"].precision == "fp8" and entries["decode"].precision == "bfloat16"


def test_the_plan_check_names_what_differs(tensorrt_stages):
    out, entries, _, _ = tensorrt_stages
    plan = BufferPlan.from_dict(entries["decode"].buffers)
    io = graph_io(onnx.load(str(out / entries["decode"].file)))
    io = [(n, i, "float16" if n == "logits" else d, (7, *s[1:]) if n == "token_ids" else s) for n, i, d, s in io]
    problems = plan.mismatches(io)
    assert "'logits' has dtype float16 in the built graph, float32 in the plan" in problems
    assert "'token_ids' dim 0 is 7 in the built graph, fixed at 1 in the plan" in problems


def test_profiles_are_the_stage_specs_with_opt_at_the_request(tensorrt_stages, shape):
    out, entries, built, plan = tensorrt_stages
    config = built[str(out / entries["decode"].engine)]
    assert entries["decode"].tensorrt_config == config.to_dict()
    assert all(i.min == i.opt == i.max for i in config.profiles[0].inputs)  # fixed: the graph's own shapes
    # the prefill's profile (what its exporter hands TensorRT): prompt 1..limit, tuned for the built request
    (profile,) = trt_build.TensorRTBuildConfig.from_profile(plan.stages["prefill"].profile).profiles
    embeds, past = ({i.name: i for i in profile.inputs}[n] for n in ("embeds", "past_keys"))
    assert embeds.opt[1] == shape.prompt_tokens == 36 and embeds.min[1] == 1 and embeds.max[1] == 512
    assert past.min[3] == past.opt[3] == 0 and past.max[3] == 511  # a fresh request has no cached prefix
    assert entries["denoise"].device_vs_eager == {"checked_on": "cuda"}  # validated on the GPU, never a CPU provider


def test_fp8_graph_has_linear_and_attention_qdq(tensorrt_stages):
    out, entries, _, plan = tensorrt_stages
    entry = entries["denoise"]
    graph = onnx.load(str(out / entry.file))
    ops = [n.op_type for n in graph.graph.node]
    calls = len(AttentionScales.load(out / entry.fp8_attention))
    # per Linear: input Q/DQ + weight DQ; per attention: q, k, v and the softmax probabilities
    assert ops.count("QuantizeLinear") == entry.fp8_layers + 4 * calls
    assert ops.count("DequantizeLinear") == 2 * entry.fp8_layers + 4 * calls
    assert calls == 2 * 2  # tiny LTX: two blocks, self- and cross-attention
    assert plan.factors.device == H100 and plan.factors.backend == "tensorrt"


# --------------------------------------------------------------------- torch-tensorrt: exported programs (no GPU)
def test_exported_programs_round_trip_equal_to_eager(tiny, shape, tmp_path, monkeypatch):
    """The torch-tensorrt exporter up to the GPU call: each stage's program is saved with torch.export.save, and
    the reloaded program (standing in for the compiled one) equals the eager stage."""
    compiled = {}

    def compile_program(program_path, plan, out_path, options, device):
        compiled[out_path.name] = options
        out_path.write_bytes(program_path.read_bytes())

    def load_program(path, plan):
        return torch.export.load(str(path)).module()
    monkeypatch.setattr(build_plan, "device_info", lambda device: H100)
    monkeypatch.setattr(torch_trt_build, "compile_program", compile_program)
    monkeypatch.setattr(exporters, "_gpu", lambda job: torch.device("cpu"))
    monkeypatch.setattr(torch_trt_runner, "load_program", load_program)
    policy = PrecisionPolicy.for_precision("fp32")
    plan = resolve_plan(tiny, "weights", "torch-tensorrt", policy, shape, "cuda", None, ("prefill", "adapter"))
    entries = {n: e for c in exporters.write_stages(tiny, plan, tmp_path, {}).values() for n, e in c.items()}
    for name in ("prefill", "adapter"):
        assert max(entries[name].device_vs_eager.values()) < 1e-6, (name, entries[name].device_vs_eager)
        assert (tmp_path / entries[name].program).is_file() and entries[name].engine.endswith(".trt.pt2")
    assert compiled["prefill.trt.pt2"] == {"use_explicit_typing": True, "min_block_size": 1}
    # the prefill program is dynamic in the prompt and the cached prefix: another length than the export's
    spec = export_specs(tiny.config)["prefill"]
    program = torch.export.load(str(tmp_path / entries["prefill"].program)).module()
    longer = spec.sample_inputs(BuildShape(**{**shape.to_dict(), "prompt_tokens": 50}), seed=4)
    with torch.inference_mode():
        for got, want in zip(program(*longer), spec.wrap(tiny, shape)(*longer)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not modelopt_fp8.available(), reason="needs nvidia-modelopt")
def test_modelopt_fp8_program_round_trips(tiny, shape, tmp_path):
    """Under FP8, Torch-TensorRT compiles ModelOpt's quantized module: exported in ModelOpt's export mode, saved,
    reloaded, equal to ModelOpt's fake-quantized module."""
    spec = export_specs(tiny.config)["adapter"]
    module = spec.wrap(tiny, shape).eval()
    batches = [spec.sample_inputs(shape, seed=k) for k in range(2)]
    quantized = modelopt_fp8.with_scales(module, fp8.calibrate(module, batches))
    torch_trt_build.export_program(quantized, spec, batches[0], tmp_path / "adapter.pt2", modelopt=True)
    program = torch.export.load(str(tmp_path / "adapter.pt2")).module()
    probe = spec.sample_inputs(shape, seed=5)
    with torch.inference_mode():
        for got, want in zip(program(*probe), quantized(*probe)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- FP8: attention, ModelOpt
def test_fp8_attention_graph_equals_the_simulation(tiny, shape, tmp_path):
    spec = export_specs(tiny.config)["adapter"]
    module = spec.wrap(tiny, shape).eval()
    batches = [spec.sample_inputs(shape, seed=k) for k in range(3)]
    scales = record_attention(module, batches)
    stage = Fp8AttentionStage(module, scales, kv_cache=False, attention=True)
    with exporters._quiet("onnx_ir", "onnxscript"):
        torch.onnx.export(stage, batches[0], str(tmp_path / "a.onnx"), input_names=["world_latent"], dynamo=True,
                          opset_version=20, custom_translation_table=CUSTOM_TRANSLATIONS)
    graph = onnx.load(str(tmp_path / "a.onnx"))
    assert [n.op_type for n in graph.graph.node].count("QuantizeLinear") == 4 * len(scales)
    probe = spec.sample_inputs(shape, seed=7)
    got = _ort(tmp_path / "a.onnx", quantized=True).run(None, {"world_latent": probe[0].numpy()})[0]
    with torch.inference_mode():
        simulated, plain = stage(*probe)[0], module(*probe)[0]
    assert relative_l2(got, simulated) < 1e-5  # ORT's Q/DQ graph == the CPU simulation
    assert 1e-4 < relative_l2(simulated, plain) < 0.1  # really quantized, within FP8's error


@pytest.mark.skipif(not modelopt_fp8.available(), reason="needs nvidia-modelopt")
def test_modelopt_calibration_agrees_with_ours_layer_by_layer(tiny, shape):
    spec = export_specs(tiny.config)["denoise"]
    module = spec.wrap(tiny, shape).eval()
    batches = [spec.sample_inputs(shape, seed=k) for k in range(2)]
    keep_high = PrecisionPolicy.for_precision("fp8").keep_high
    ours = fp8.calibrate(module, batches, skip=lambda name, layer: any(p in name for p in keep_high))
    theirs = modelopt_fp8.calibrate(module, batches, keep_high)
    assert set(theirs.amax) == set(ours.amax) and len(ours) == 21  # proj_out, embedders skipped by both
    for name, (a_in, a_w) in ours.amax.items():
        assert theirs.amax[name] == pytest.approx((a_in, a_w), rel=1e-6), name
    probe = spec.sample_inputs(shape, seed=3)
    with torch.inference_mode():
        plain = module(*probe)
        by_them = modelopt_fp8.quantize(module, batches, keep_high)(*probe)
        by_us = fp8.apply_fp8_simulation(copy.deepcopy(module), ours)(*probe)
    assert relative_l2(by_them, by_us) < 1e-5 < 1e-2 < relative_l2(by_us, plain)


# ------------------------------------------------------------------------------------------------ external data
def test_external_data_is_written_fresh_never_appended(tmp_path):
    """`onnx.save_model` appends to an existing data file (the old offsets go dead); `save_onnx` rewrites it."""
    weights = numpy_helper.from_array(np.random.default_rng(0).random((128, 128), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 128])], [weights])
    path = tmp_path / "m.onnx"
    save_onnx(helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 20)]), path,
              external_threshold=1000)
    size = os.path.getsize(data_file(path))
    assert size == 128 * 128 * 4
    for _ in range(3):  # load (data read back), change nothing, save again
        save_onnx(onnx.load(str(path)), path, external_threshold=1000)
        assert os.path.getsize(data_file(path)) == size
    x = np.ones((1, 128), np.float32)
    assert np.allclose(_ort(path).run(None, {"x": x})[0], x @ numpy_helper.to_array(weights))
    onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True, location=data_file(path).name)
    assert os.path.getsize(data_file(path)) == 2 * size  # what a plain re-save does (the bug this avoids)
    save_onnx(onnx.load(str(path)), path)  # small again: one protobuf, the stale data file removed
    assert not data_file(path).exists()
    assert len(list(tmp_path.iterdir())) == 1  # no staging directory left behind


def test_fp8_qdq_resave_of_a_large_graph_writes_one_data_file(tmp_path, monkeypatch):
    """insert_qdq re-saves a graph that already has external data: the data file is rewritten, not grown."""
    from foresight_engine.builders import onnx_io
    monkeypatch.setattr(onnx_io, "PROTOBUF_LIMIT", 1000)
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Linear(64, 64)).eval()
    x = torch.randn(2, 64)
    with exporters._quiet("onnx_ir", "onnxscript"):
        program = torch.onnx.export(linear, (x,), dynamo=True, opset_version=20)
    path = tmp_path / "l.onnx"
    save_onnx(program.model_proto, path, external_threshold=1000)
    before = os.path.getsize(data_file(path))
    scales = fp8.calibrate(linear, [(x,)])
    fp8.insert_qdq(path, scales, out_path=path)
    after = os.path.getsize(data_file(path))
    assert after < before + 64 * 64  # the fp32 weight replaced by its float8 copy, nothing appended
    got = _ort(path, quantized=True).run(None, {_ort(path).get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        assert relative_l2(got, fp8.apply_fp8_simulation(copy.deepcopy(linear), scales)(x)) < 1e-6


def test_gpu_backends_refuse_at_once_without_a_gpu(tmp_path):
    from foresight_engine.builders.build import build
    from foresight_engine.errors import BackendUnavailable
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for backend, fallback in (("tensorrt", "--backend onnx"), ("torch-tensorrt", "--backend compile")):
        with pytest.raises(BackendUnavailable, match=f"no CUDA device.*{fallback}"):
            build(GLPModel.__new__(GLPModel), tmp_path / backend, backend=backend, precision="bf16", device="cuda")
        assert not (tmp_path / backend).exists()


def test_stage_entries_carry_the_gpu_fields():
    plan = BufferPlan.from_dict({"inputs": [{"name": "b", "dtype": "int64", "min": [1], "opt": [1], "max": [1]},
                                            {"name": "a", "dtype": "bfloat16", "min": [1, 0], "opt": [1, 4],
                                             "max": [1, 8]}],
                                 "outputs": [{"name": "y", "dtype": "float32", "min": [1], "opt": [1], "max": [1]}]})
    entry = StageEntry("tensorrt", "bf16", file="b/decode.onnx", engine="b/decode.plan", buffers=plan.to_dict(),
                       device_vs_eager={"logits": 1e-3}, fp8_attention="b/decode.fp8-attention.json")
    # the manifest is written with sorted keys: the plan keeps the call order of its inputs (b before a)
    again = StageEntry.from_dict(json.loads(json.dumps(entry.to_dict(), sort_keys=True)))
    assert again == entry and [t.name for t in BufferPlan.from_dict(again.buffers).inputs] == ["b", "a"]
    assert [b.numel() for b in plan.allocate("cpu").values()] == [1, 8, 1]  # max shapes, never empty


# ------------------------------------------------------------------------------------------------ make gpu-check
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_check_refuses_at_once_with_one_line(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "foresight_engine.bench.gpu_check", "--out", str(tmp_path)],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    # the last line; the ones before it, if any, are diffusers' and torch's import-time notices about torchao
    assert done.stderr.strip().splitlines()[-1] == (
        "gpu-check: no CUDA GPU here (torch.cuda.is_available() is False): nothing to check; run it on a GPU machine")
    assert not any(tmp_path.iterdir())  # nothing written
    if shutil.which("make") and not shutil.which("nvidia-smi"):
        done = subprocess.run(["make", "-s", "gpu-check"], cwd=root, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and done.stdout.strip().splitlines() == [
            "gpu-check: no NVIDIA GPU here (nvidia-smi finds none): nothing to check; run it on a GPU machine"]


def test_gpu_check_report_says_what_passed_and_the_ratios():
    from foresight_engine.bench.gpu_check import format_report, summarize
    outcomes = {"tests/test_gpu_acceptance.py::test_a[tiny]": "passed", "tests/test_device_gpu.py::test_b": "failed"}
    records = [{"test": "load_and_predict", "preset": "tiny", "backend": "tensorrt", "precision": "fp8",
                "frame_psnr": 41.234, "token_agreement": 0.9, "passed": True},
               {"test": "cuda_graph", "preset": "small", "backend": "tensorrt", "precision": "bf16", "captures": 1,
                "max_abs_diff": 0.0, "passed": True}]
    bench = {"preset": "small", "speedup_vs_naive": {"tensorrt-fp8": 3.5}, "speedup_vs_best_peer": {"tensorrt-fp8": 1.6},
             "targets": [], "results": []}
    summary = summarize(outcomes, records, bench, {"gpu": "GPU X", "torch": "2.14.1", "cuda": "13.0", "date": "d"})
    text = format_report(summary)
    assert "## Tests: 1 / 2 passed" in text and "| `tests/test_device_gpu.py::test_b` | failed |" in text
    assert "| tiny | tensorrt | fp8 | 41.2 | 0.900 | yes |" in text
    assert "| tensorrt-fp8 | 3.50 | 1.60 |" in text and "Measured on GPU X" in text
    assert json.loads(json.dumps(summary))["bench"]["speedup_vs_naive"] == {"tensorrt-fp8": 3.5}
