"""ONNX (fp32 and fp8 Q/DQ) and torch.compile (bf16) artifacts of the tiny preset against eager fp32.

Each artifact is built once per module; torch.compile and the ONNX export take seconds per stage.
"""
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from foresight_engine.artifact import read_manifest
from foresight_engine.builders import fp8
from foresight_engine.builders.accuracy import relative_l2
from foresight_engine.builders.build import build
from foresight_engine.backends import Backend
from foresight_engine.engine import Engine
from foresight_engine.engine.artifact_loader import load_artifact
from foresight_engine.engine.runners.onnx import OnnxStage
from foresight_engine.models.export_spec import BuildShape, export_specs
from foresight_engine.models.glp import GLPModel
from foresight_engine.precision import PrecisionPolicy

PROMPT = "What happens next?"
EXAMPLE = Path(__file__).resolve().parents[1] / "assets" / "example.png"


@pytest.fixture(scope="module")
def tiny() -> GLPModel:
    return GLPModel.from_preset("tiny", 0)


@pytest.fixture(scope="module")
def shape(tiny) -> BuildShape:
    return BuildShape.for_config(tiny.config)


@pytest.fixture(scope="module")
def onnx_fp32(tiny, tmp_path_factory):
    return build(tiny, tmp_path_factory.mktemp("art") / "onnx_fp32", backend="onnx", precision="fp32")


@pytest.fixture(scope="module")
def onnx_fp8(tiny, tmp_path_factory):
    # the denoising step only (the fp8 Linears of the LTX transformer); no gate: tiny's random text model has
    # near-tied logits, so its token agreement says little (the test checks the numbers instead)
    return build(tiny, tmp_path_factory.mktemp("art") / "onnx_fp8", backend="onnx", precision="fp8",
                 stages=("denoise",), gate=False)


@pytest.fixture(scope="module")
def compile_bf16(tiny, tmp_path_factory):
    return build(tiny, tmp_path_factory.mktemp("art") / "compile_bf16", backend="compile", precision="bf16",
                 stages=("denoise",), gate=False)


def test_onnx_fp32_matches_eager(onnx_fp32, engine, image):
    """Gate on (fp32: rel L2 <= 1e-5 per stage, PSNR >= 60 dB, every token equal)."""
    acc = onnx_fp32.accuracy
    assert all(c.relative_l2 < 1e-5 for c in acc.components), acc
    assert acc.token_agreement == 1.0 and acc.frame_psnr >= 60
    manifest = read_manifest(onnx_fp32.directory)
    stages = manifest.stages
    assert stages["vision"].backend == "eager" and "data-dependent" in stages["vision"].reason
    built = ("prefill", "decode", "adapter", "denoise", "vae_decode")
    for name in built:
        assert stages[name].backend == "onnx" and (onnx_fp32.directory / stages[name].file).is_file()
        assert max(stages[name].ort_vs_eager.values()) < 1e-5
    loaded = Engine.load(onnx_fp32.directory)
    # one runner per built stage, called by the engine directly (the decode stage on the full KV buffer)
    assert dict(loaded.built.backends) == {name: Backend.ONNX for name in built}
    assert all(isinstance(loaded.stages[name], OnnxStage) for name in built if name != "denoise")
    assert loaded.velocity.step_for(None) is loaded.built.functions["denoise"]
    want, got = engine.predict(image, PROMPT, seed=5), loaded.predict(image, PROMPT, seed=5)
    assert got.token_ids == want.token_ids
    assert np.abs(got.frames.astype(int) - want.frames.astype(int)).max() <= 1


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
    # calibration is deterministic: the default set's digest is the key factor
    spec = export_specs(tiny.config)["denoise"]
    batches = [spec.sample_inputs(shape, seed=k) for k in range(4)]
    assert manifest.factors.calibration_hash == fp8.batches_digest(batches)
    module = spec.wrap(tiny, shape).eval()
    scales = fp8.Fp8Scales.load(onnx_fp8.directory / entry.fp8_scales)
    keeps_high = PrecisionPolicy.for_precision("fp8").keeps_high
    assert scales.digest() == fp8.calibrate(module, batches, skip=lambda name, layer: keeps_high(name)).digest()
    # the reported denoise error equals a direct computation: simulated fp8 stage vs fp32 on the probe inputs
    probe = spec.sample_inputs(shape, seed=2)
    with torch.inference_mode():
        direct = relative_l2(fp8.apply_fp8_simulation(spec.wrap(GLPModel.from_preset("tiny", 0), shape).eval(),
                                                      scales)(*probe), module(*probe))
    reported = {c.name: c for c in onnx_fp8.accuracy.components}["denoise"].relative_l2
    assert 1e-4 < reported < 0.15  # really quantized, and within fp8's tolerance
    assert reported == pytest.approx(direct, abs=5e-3)  # ORT's Q/DQ graph vs the torch simulation, as above


def test_compiled_denoise_step_runs_twice_without_recompiling(compile_bf16, tiny, shape):
    options = read_manifest(compile_bf16.directory).factors.options
    # fullgraph=True: a graph break in the denoising step would raise instead of silently splitting the graph
    assert options["fullgraph"] is True and options["mode"] is None  # reduce-overhead only on a GPU
    spec = export_specs(tiny.config)["denoise"]
    _, built, _ = load_artifact(compile_bf16.directory)
    denoise = built.functions["denoise"]
    torch._dynamo.reset()  # the build's own accuracy check compiled the same code for another model instance
    # config.patch, not monkeypatch: undoing a setattr on dynamo's config module deletes the option
    with torch.inference_mode(), torch._dynamo.config.patch(error_on_recompile=True):
        first = denoise(*spec.sample_inputs(shape, seed=3))
        second = denoise(*(x.to(torch.bfloat16) if x.is_floating_point() else x  # a bf16 caller: same graph
                           for x in spec.sample_inputs(shape, seed=4)))
        reference = spec.wrap(tiny, shape)(*spec.sample_inputs(shape, seed=4))
    assert not torch.equal(first, second)
    assert relative_l2(second, reference) < 2e-2  # bf16
    denoise = {c.name: c for c in compile_bf16.accuracy.components}["denoise"]
    assert 1e-4 < denoise.relative_l2 < 2e-2  # really bf16, within its tolerance


def test_cache_hit_of_an_ungated_artifact_still_meets_the_gate(compile_bf16, tiny):
    """The compile artifact was built with the gate off; a gated build of the same key is a hit (nothing rebuilt)
    but is checked against the stored accuracy report, so it fails on a limit that report misses."""
    from foresight_engine.builders.accuracy import AccuracyThresholds
    from foresight_engine.errors import AccuracyGateError
    strict = AccuracyThresholds(max_relative_l2=1e-4, min_cosine=0.99, min_frame_psnr=20, min_token_agreement=0.5)
    with pytest.raises(AccuracyGateError, match="denoise: relative_l2"):
        build(tiny, compile_bf16.directory, backend="compile", precision="bf16", stages=("denoise",),
              thresholds=strict)
    assert read_manifest(compile_bf16.directory).key == compile_bf16.key  # still there, untouched


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
