"""ONNX (fp32 and fp8 Q/DQ) and compile (AOTInductor packages: int8 denoising step, bf16 VAE decode) artifacts of
the tiny preset against eager fp32.

Each artifact is built once per module; AOTInductor and the ONNX export take seconds per stage.
"""
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from foresight_engine.artifact import read_manifest
from foresight_engine.builders import fp8, modelopt_fp8
from foresight_engine.builders.accuracy import relative_l2
from foresight_engine.builders.build import build
from foresight_engine.builders.calibration import StageRecorder, calibration_batches
from foresight_engine.builders.gate import STAGE_CALLS
from foresight_engine.builders.probes import PROBE_PROMPTS, probe_images, probe_settings
from foresight_engine.backends import Backend
from foresight_engine.engine import Engine
from foresight_engine.engine.artifact_loader import load_artifact
from foresight_engine.builders.onnx_io import graph_io
from foresight_engine.engine.runners.buffers import POINTS, BufferPlan
from foresight_engine.engine.runners.onnx import OnnxStage
from foresight_engine.models.export_spec import BuildShape, export_specs
from foresight_engine.models.glp import GLPModel
from foresight_engine.precision import PrecisionPolicy

PROMPT = "What happens next?"
EXAMPLE = Path(__file__).resolve().parents[1] / "assets" / "example.png"


@pytest.fixture(scope="module")
def onnx_fp32(tiny, tmp_path_factory):
    # every stage, the vision tower too, for the test images' size (72x96: patch grid 2x4)
    return build(tiny, tmp_path_factory.mktemp("art") / "onnx_fp32", backend="onnx", precision="fp32",
                 shape=BuildShape.for_config(tiny.config, image_size=(72, 96)))


@pytest.fixture(scope="module")
def onnx_fp8(tiny, tmp_path_factory):
    # the denoising step only (the fp8 Linears of the LTX transformer); no gate: tiny's random text model has
    # near-tied logits, so its token agreement says little (the test checks the numbers instead)
    return build(tiny, tmp_path_factory.mktemp("art") / "onnx_fp8", backend="onnx", precision="fp8",
                 stages=("denoise",), gate=False)


@pytest.fixture(scope="module")
def compile_int8(tiny, tmp_path_factory):
    # int8 keeps the VAE in bf16: one build covers an int8 whole step and a bf16 stage; the backbone's int8 Linears
    # run eager (simulated) as prefill/decode are not selected
    return build(tiny, tmp_path_factory.mktemp("art") / "compile_int8", backend="compile", precision="int8",
                 stages=("denoise", "vae_decode"), gate=False)


def test_onnx_fp32_matches_eager(onnx_fp32, engine, image):
    """Gate on (fp32: rel L2 <= 1e-5 per stage, PSNR >= 60 dB, every token equal)."""
    acc = onnx_fp32.accuracy
    assert all(c.relative_l2 < 1e-5 for c in acc.components), acc
    assert acc.token_agreement == 1.0 and acc.frame_psnr >= 60
    manifest = read_manifest(onnx_fp32.directory)
    stages = manifest.stages
    built = ("vision", "prefill", "decode", "adapter", "denoise", "vae_decode")
    for name in built:
        assert stages[name].backend == "onnx" and (onnx_fp32.directory / stages[name].file).is_file()
        assert max(stages[name].ort_vs_eager.values()) < 1e-5
    loaded = Engine.load(onnx_fp32.directory)
    # one runner per built stage, called by the engine directly (the decode stage on the full KV buffer)
    assert dict(loaded.built.backends) == {name: Backend.ONNX for name in built}
    assert all(isinstance(loaded.built.functions[name], OnnxStage) for name in built)
    assert loaded.velocity.step_for(None) is loaded.built.functions["denoise"]
    want, got = engine.predict(image, PROMPT, seed=5), loaded.predict(image, PROMPT, seed=5)
    assert got.token_ids == want.token_ids
    assert np.abs(got.frames.astype(int) - want.frames.astype(int)).max() <= 1


def test_every_stage_graph_matches_its_buffer_plan_at_every_profile_point(onnx_fp32, tiny):
    """What the GPU runners allocate from (names, dtypes, min/opt/max shapes) against the graphs TensorRT builds:
    statically (static dims equal, dynamic dims symbolic), then by running each graph at each profile point."""
    manifest = read_manifest(onnx_fp32.directory)
    for name, spec in export_specs(tiny.config).items():
        entry = manifest.stages[name]
        plan = BufferPlan.from_dict(entry.buffers)
        graph = onnx.load(str(onnx_fp32.directory / entry.file))
        assert plan.mismatches(graph_io(graph)) == [], name
        assert [t.name for t in plan.inputs] == list(spec.input_names)
        session = OnnxStage(onnx_fp32.directory / entry.file)
        samples = spec.sample_inputs(BuildShape.for_config(tiny.config, image_size=(72, 96)))
        for point in POINTS:
            inputs = [sample if tuple(sample.shape) == t.shape(point) else torch.zeros(t.shape(point), dtype=sample.dtype)
                      for sample, t in zip(samples, plan.inputs)]  # index tables keep their values
            outputs = session(*inputs)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            assert [tuple(o.shape) for o in outputs] == [t.shape(point) for t in plan.outputs], (name, point)
            assert [o.dtype for o in outputs] == [t.torch_dtype for t in plan.outputs], (name, point)
    prefill = BufferPlan.from_dict(manifest.stages["prefill"].buffers)
    assert prefill.dynamic and {t.name: t.opt for t in prefill.inputs}["embeds"][1] == 32 + 2  # the request


def test_onnx_artifact_refuses_another_grid(onnx_fp32, image, tmp_path, capsys):
    from foresight_engine.cli import main
    from foresight_engine.errors import ArtifactError
    loaded = Engine.load(onnx_fp32.directory)
    with pytest.raises(ArtifactError, match=r"^this artifact is built for 9 frames at 64x64; the request asks for "
                                            r"13 frames at 64x64: rebuild with num_frames=13 or ask for num_frames=9$"):
        loaded.prepare(image, PROMPT, num_frames=13)  # refused while validating, before any model runs
    with pytest.raises(ArtifactError, match="without guidance; .* rebuild with classifier-free guidance or ask for "
                                            "guidance_scale=1"):
        loaded.prepare(image, PROMPT, guidance_scale=3.0)  # built without classifier-free guidance
    with pytest.raises(ArtifactError, match="rebuild needed: .*decode stage is built for a KV cache of 4096 slots"):
        Engine.load(onnx_fp32.directory, max_seq_len=100)  # the built decode step's buffers are fixed
    with pytest.raises(ArtifactError, match=r"rebuild needed: .*vision stage is built for images of patch grid "
                                            r"\(1, 2, 4\).*\[\(1, 4, 4\)\].*--image-size"):
        loaded.prepare(np.zeros((64, 64, 3), np.uint8), PROMPT)  # a square image: another patch grid
    # the CLI says it with the flags the user typed
    assert main(["predict", "--engine", str(onnx_fp32.directory), "--image", str(EXAMPLE), "--prompt", PROMPT,
                 "--out", str(tmp_path), "--frames", "5", "--height", "32"]) == 2
    err = capsys.readouterr().err
    assert "this artifact is built for 9 frames at 64x64; the request asks for 5 frames at 32x64: rebuild with " \
           "--frames 5, --height 32 or ask for --frames 9, --height 64" in err


def test_fp8_qdq_graph_and_reported_accuracy(onnx_fp8, tiny, shape):
    manifest = read_manifest(onnx_fp8.directory)
    entry = manifest.components["video_decoder"].stages["denoise"]
    # the Q/DQ graph in ONNX Runtime equals the torch simulation up to a few flipped e4m3 roundings (sin/cos ulps)
    assert entry.fp8_layers > 0 and entry.ort_vs_eager["velocity"] < 5e-3
    graph = onnx.load(str(onnx_fp8.directory / entry.file))
    assert any(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    assert any(init.data_type == onnx.TensorProto.FLOAT8E4M3FN for init in graph.graph.initializer)
    # calibrated on the probe requests' real stage inputs, every step of the trajectory; the set and the
    # calibrator are the key factor
    spec = export_specs(tiny.config)["denoise"]
    batches = calibration_batches(tiny, [spec], shape, None)["denoise"]
    assert len(batches) == 2 * tiny.config.generation.num_inference_steps
    calibrator, digest = manifest.factors.calibration_hash.split(":", 1)
    assert calibrator == ("modelopt" if modelopt_fp8.available() else "max") and digest == fp8.batches_digest(batches)
    module = spec.wrap(tiny, shape).eval()
    scales = fp8.Fp8Scales.load(onnx_fp8.directory / entry.fp8_scales)
    keeps_high = PrecisionPolicy.for_precision("fp8").keeps_high
    assert scales.digest() == fp8.calibrate(module, batches, skip=lambda name, layer: keeps_high(name)).digest()
    # the reported denoise error equals a direct computation: the simulated fp8 stage vs fp32 on the stage inputs
    # of the gate's probe requests
    recorder = StageRecorder(tiny, [spec], shape, limit=STAGE_CALLS)
    for image, prompt in zip(probe_images(shape), PROBE_PROMPTS):
        recorder.predict(image, prompt, **probe_settings(shape))
    simulated = fp8.apply_fp8_simulation(spec.wrap(GLPModel.from_preset("tiny", 0), shape).eval(), scales)
    with torch.inference_mode():
        direct = relative_l2(torch.cat([simulated(*b).reshape(-1) for b in recorder.inputs["denoise"]]),
                             torch.cat([module(*b).reshape(-1) for b in recorder.inputs["denoise"]]))
    reported = {c.name: c for c in onnx_fp8.accuracy.components}["denoise"].relative_l2
    assert 1e-4 < reported < 0.15  # really quantized, and within fp8's tolerance
    assert reported == pytest.approx(direct, abs=5e-3)  # ORT's Q/DQ graph vs the torch simulation, as above


def test_compile_artifact_is_aot_packages_with_int8_gemms(compile_int8):
    manifest = read_manifest(compile_int8.directory)
    assert manifest.factors.options["aot"] and manifest.factors.options["fullgraph"]
    stages = manifest.stages
    assert (stages["denoise"].precision, stages["vae_decode"].precision) == ("int8", "bfloat16")
    for name in ("denoise", "vae_decode"):
        assert stages[name].file.endswith(".pt2") and (compile_int8.directory / stages[name].file).is_file()
    # the package against the eager stage it was exported from (the same int8 simulation, bf16 VAE)
    assert stages["denoise"].aot_vs_eager["latents"] < 5e-3 and stages["vae_decode"].aot_vs_eager["video"] < 2e-2
    # real int8 GEMMs (oneDNN's qlinear), not a dequantize-then-bf16 simulation
    with zipfile.ZipFile(compile_int8.directory / stages["denoise"].file) as z:
        wrapper = next(z.read(n).decode() for n in z.namelist() if n.endswith(".wrapper.cpp"))
    assert "qlinear_pointwise" in wrapper
    # reported vs the fp32 eager reference: really quantized, within int8's tolerance
    denoise = {c.name: c for c in compile_int8.accuracy.components}["denoise"]
    assert 1e-4 < denoise.relative_l2 < 1e-1 and compile_int8.accuracy.frame_psnr > 35


def test_compile_artifact_loads_and_runs_without_compiling(compile_int8, engine, image, tiny, shape):
    """Loading runs no torch.compile/dynamo frame; the one package serves every step (the step index is an input)
    and the engine runs it as the loop's whole step."""
    from torch._dynamo.utils import counters
    frames_before = sum(counters["frames"].values())
    loaded = Engine.load(compile_int8.directory)
    assert loaded.built.static_denoise and loaded.program is not None
    got = loaded.predict(image, PROMPT, seed=5)
    assert sum(counters["frames"].values()) == frames_before  # nothing traced or compiled
    want = engine.predict(image, PROMPT, seed=5)
    from foresight_engine.verify.metrics import psnr_per_frame
    assert min(psnr_per_frame(got.frames, want.frames)) > 35  # int8 DiT + bf16 VAE vs fp32 eager
    spec = export_specs(tiny.config, loaded.built.denoise_ops)["denoise"]
    inputs = list(spec.sample_inputs(shape, seed=3))
    step = loaded.built.functions["denoise"]
    with torch.inference_mode():
        first = step(*inputs)
        inputs[1] = torch.tensor(0)
        second = step(*inputs)
        reference = spec.wrap(tiny, shape)(*inputs)  # the fp32 eager whole step
    assert not torch.equal(first, second)
    assert relative_l2(second, reference) < 1e-1


def test_cache_hit_of_an_ungated_artifact_still_meets_the_gate(compile_int8, tiny):
    """The compile artifact was built with the gate off; a gated build of the same key is a hit (nothing rebuilt)
    but is checked against the stored accuracy report, so it fails on a limit that report misses."""
    from foresight_engine.builders.accuracy import AccuracyThresholds
    from foresight_engine.errors import AccuracyGateError
    strict = AccuracyThresholds(max_relative_l2=1e-4, min_cosine=0.99, min_frame_psnr=20, min_token_agreement=0.0)
    with pytest.raises(AccuracyGateError, match="denoise: relative_l2"):
        build(tiny, compile_int8.directory, backend="compile", precision="int8", stages=("denoise", "vae_decode"),
              thresholds=strict)
    assert read_manifest(compile_int8.directory).key == compile_int8.key  # still there, untouched


def test_calibration_records_every_stage_call_of_the_runtime(tiny, shape, tmp_path, image):
    """Regression: `--calib IMAGE:PROMPT` recorded nothing (it tapped component methods the static runtime never
    calls). It now records at the stage boundary: the denoising step at every step of the trajectory, every decode
    step (the filled cache slots only), the prefill, the adapter and the VAE decode."""
    from PIL import Image

    from foresight_engine.builders.calibration import CalibrationSample, calibration_batches
    Image.fromarray(image).save(tmp_path / "in.png")
    specs = export_specs(tiny.config)
    names = ("prefill", "decode", "adapter", "denoise", "vae_decode")
    batches = calibration_batches(tiny, [specs[n] for n in names], shape,
                                  [CalibrationSample(tmp_path / "in.png", PROMPT)])
    steps = tiny.config.generation.num_inference_steps
    assert len(batches["denoise"]) == steps
    timesteps = [b[3].amax().item() for b in batches["denoise"]]  # per-token timesteps: the moving frames' t_i
    assert timesteps == sorted(set(timesteps), reverse=True)  # every step, from noise to clean
    assert [len(batches[n]) for n in ("prefill", "adapter", "vae_decode")] == [1, 1, 1]
    decode = batches["decode"]
    assert decode and all(b[2].shape[3] == int(b[4]) for b in decode)  # filled slots only
    assert [int(b[4]) for b in decode] == list(range(int(decode[0][4]), int(decode[0][4]) + len(decode)))


def test_fp8_build_with_calibration_images_from_the_cli(tmp_path, image):
    from PIL import Image

    from foresight_engine.cli import main
    Image.fromarray(image).save(tmp_path / "in.png")
    out = tmp_path / "fp8"
    assert main(["build", "--preset", "tiny", "--backend", "onnx", "--precision", "fp8", "--stages", "denoise",
                 "--calib", f"{tmp_path / 'in.png'}:{PROMPT}", "--out", str(out)]) == 0
    manifest = read_manifest(out)
    assert manifest.stages["denoise"].fp8_layers > 0 and manifest.factors.calibration_hash
    assert Engine.load(out).predict(image, PROMPT, num_inference_steps=2).frames.shape[0] == 9
