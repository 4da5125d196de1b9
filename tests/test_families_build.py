"""The new decoder family and the hybrid encoder through every backend's build + load + gate, on one tiny model
that has both (HunyuanVideo-1.5 decoder, DINOv2 spatial encoder): eager (fp32, fp16), torch.compile (bf16), ONNX
(fp8 Q/DQ denoising step, the other new stages fp32) and TensorRT as far as a CPU goes (its build config from the
same profiles and graphs). Each artifact is built once per module."""
import numpy as np
import onnx
import pytest
import torch

from foresight_engine import Engine
from foresight_engine.artifact import read_manifest
from foresight_engine.backends import Backend
from foresight_engine.builders.build import build
from foresight_engine.config import preset
from foresight_engine.engine.runners.onnx import OnnxStage
from foresight_engine.errors import BackendUnavailable
from foresight_engine.models.glp import GLPModel

PROMPT = "What happens next?"
NEW_STAGES = ("spatial", "adapter", "denoise", "vae_decode")  # what the family and the hybrid encoder bring


@pytest.fixture(scope="module")
def model() -> GLPModel:
    config = preset("tiny-hunyuan15").replace(name="tiny-hunyuan15-hybrid",
                                              spatial_encoder=preset("tiny-hybrid").spatial_encoder)
    return GLPModel.random(config, 0)


@pytest.fixture(scope="module")
def onnx_fp8(model, tmp_path_factory):
    return build(model, tmp_path_factory.mktemp("art") / "onnx", backend="onnx", precision="fp8", stages=NEW_STAGES)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_eager_artifact_passes_the_gate_and_reproduces_the_model(model, tmp_path, image, precision):
    result = build(model, tmp_path / precision, precision=precision)
    names = {c.name for c in result.accuracy.components}
    assert {"spatial", "denoise", "vae_decode"} <= names
    loaded = Engine.load(result.directory)
    assert sorted(read_manifest(result.directory).components) == sorted(model.components())
    assert loaded.model.spatial_encoder is not None and loaded.config == model.config
    if precision == "fp32":
        want, got = Engine(model).predict(image, PROMPT, seed=3), loaded.predict(image, PROMPT, seed=3)
        assert got.token_ids == want.token_ids and np.array_equal(got.frames, want.frames)


def test_onnx_fp8_denoise_and_fp32_stages(onnx_fp8, model, image):
    """Gate on: the fp8 denoising step within fp8's limits, DINOv2 / adapter / VAE graphs within fp32's."""
    manifest = read_manifest(onnx_fp8.directory)
    stages = manifest.stages
    for name in NEW_STAGES:
        assert stages[name].backend == "onnx" and (onnx_fp8.directory / stages[name].file).is_file()
    assert stages["denoise"].fp8_layers > 0 and stages["denoise"].precision == "fp8"
    assert max(stages["spatial"].ort_vs_eager.values()) < 1e-5
    assert stages["adapter"].precision == "float32" and max(stages["adapter"].ort_vs_eager.values()) < 1e-5
    graph = onnx.load(str(onnx_fp8.directory / stages["denoise"].file))
    assert [i.name for i in graph.graph.input] == ["latents", "conditioning", "conditioning_mask", "timestep",
                                                   "image_condition"]
    assert any(n.op_type == "QuantizeLinear" for n in graph.graph.node)
    denoise = {c.name: c for c in onnx_fp8.accuracy.components}["denoise"]
    assert 1e-4 < denoise.relative_l2 < 0.15
    loaded = Engine.load(onnx_fp8.directory)
    assert {n: b for n, b in loaded.built.backends.items()} == {n: Backend.ONNX for n in NEW_STAGES}
    assert all(isinstance(loaded.stages[n], OnnxStage) for n in ("spatial", "adapter", "vae_decode"))
    pred = loaded.predict(image, PROMPT, seed=3)
    assert pred.frames.shape == (9, 64, 64, 3) and "spatial" in pred.timings.stages


def test_compile_bf16_build(model, tmp_path, image):
    """torch.compile (fullgraph: no graph break in the family's step, the VAE decode or DINOv2) in bf16."""
    result = build(model, tmp_path / "compile", backend="compile", precision="bf16",
                   stages=("spatial", "denoise", "vae_decode"))
    errors = {c.name: c.relative_l2 for c in result.accuracy.components}
    assert all(1e-4 < errors[n] < 2e-2 for n in ("spatial", "denoise", "vae_decode")), errors  # really bf16
    assert read_manifest(result.directory).factors.options["fullgraph"] is True


def test_tensorrt_as_far_as_the_cpu_goes(onnx_fp8, model, tmp_path):
    """A TensorRT build needs a GPU (refused at once, by name); what it consumes is made here: the ONNX graph of
    each new stage and a build config from the same fixed-shape profiles."""
    from foresight_engine.builders.tensorrt import TensorRTBuildConfig
    with pytest.raises(BackendUnavailable, match="CUDA"):
        build(model, tmp_path / "trt", backend="tensorrt", precision="fp8", stages=NEW_STAGES)
    assert not (tmp_path / "trt").exists()
    stages = read_manifest(onnx_fp8.directory).stages
    for name in NEW_STAGES:
        config = TensorRTBuildConfig.from_profile(stages[name].profile)
        assert TensorRTBuildConfig.from_json(config.to_json()) == config
        (profile,) = config.profiles
        graph = onnx.load(str(onnx_fp8.directory / stages[name].file))
        assert {i.name for i in profile.inputs} == {i.name for i in graph.graph.input}  # bound by name
        assert all(i.min == i.opt == i.max for i in profile.inputs)  # fixed shapes: one optimisation profile point
    assert torch.Size(stages["denoise"].profile["image_condition"][0])[-1] == 5  # 4 latent channels + the mask
