"""The backend registry and the typed manifest entries: what builders, engine, bench and CLI look up."""
import importlib

import pytest
import torch

from foresight_engine.artifact import TOOLCHAIN_PACKAGES, ComponentEntry, StageEntry
from foresight_engine.backends import REGISTRY, Backend
from foresight_engine.errors import ArtifactError, BackendUnavailable, ConfigError
from foresight_engine.models.export_spec import STAGES
from foresight_engine.precision import PrecisionPolicy


def test_every_backend_has_an_entry_and_a_runner_with_load():
    assert set(REGISTRY) == set(Backend)
    for backend, spec in REGISTRY.items():
        assert spec.backend is backend and set(spec.skips) <= set(STAGES)
        assert set(spec.toolchain) <= set(TOOLCHAIN_PACKAGES)
        if spec.runner is not None:  # importable without the backend's packages (they load lazily)
            assert callable(importlib.import_module(f"foresight_engine.engine.runners.{spec.runner}").load)
    assert REGISTRY[Backend.EAGER].runner is None  # the eager stage wrappers are the engine's own


def test_lookups_replace_backend_strings():
    assert Backend.parse("onnx") is Backend.ONNX and Backend.ONNX.spec.takes("decode")
    assert not Backend.COMPILE.spec.takes("prefill") and Backend.COMPILE.spec.takes("decode")  # fixed-shape decode
    assert all(spec.takes("vision") for b, spec in REGISTRY.items() if b != Backend.COMPILE)  # host layout
    cpu, cuda = Backend.COMPILE.spec.options_for("cpu"), Backend.COMPILE.spec.options_for("cuda")
    assert cpu["aot"] and cpu["freezing"] and cpu["fullgraph"] and not cpu["max_autotune"]  # see backends.py
    assert cuda["max_autotune"] and Backend.COMPILE.spec.static_denoise
    assert Backend.ONNX.spec.options_for(torch.device("cpu")) == {"opset": 20, "dynamo": True}
    assert not Backend.ONNX.spec.graphable and Backend.TENSORRT.spec.graphable
    assert Backend.parse("torch-tensorrt") is Backend.TORCH_TENSORRT and Backend.TORCH_TENSORRT.spec.graphable
    assert Backend.TORCH_TENSORRT.spec.options_for("cuda")["use_explicit_typing"] is True
    with pytest.raises(ConfigError, match=r"'tensorrt-llm'.*\['eager', 'compile', 'onnx', 'tensorrt', "
                                          r"'torch-tensorrt'\]"):
        Backend.parse("tensorrt-llm")


def test_precisions_per_backend_and_device():
    fp8, bf16 = PrecisionPolicy.for_precision("fp8"), PrecisionPolicy.for_precision("bf16")
    with pytest.raises(ConfigError, match="fp8 needs --backend onnx, tensorrt or torch-tensorrt"):
        Backend.EAGER.spec.check_policy(fp8, "cpu")
    with pytest.raises(ConfigError, match="no ONNX Runtime CPU kernels"):
        Backend.ONNX.spec.check_policy(bf16, "cpu")
    Backend.ONNX.spec.check_policy(bf16, "cuda")
    Backend.ONNX.spec.check_policy(PrecisionPolicy.for_precision("fp8", high="fp32"), "cpu")
    assert Backend.ONNX.spec.high_precision("cpu").value == "fp32"
    assert Backend.TENSORRT.spec.high_precision("cuda").value == "bf16"
    int8 = PrecisionPolicy.for_precision("int8")
    Backend.COMPILE.spec.check_policy(int8, "cpu")  # oneDNN int8 GEMMs in the compiled graph
    for backend, device in ((Backend.EAGER, "cpu"), (Backend.COMPILE, "cuda")):
        with pytest.raises(ConfigError, match="int8"):
            backend.spec.check_policy(int8, device)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_pieces_are_named_at_once():
    assert Backend.ONNX.spec.missing("cpu") == []
    assert Backend.ONNX.spec.missing("cuda") == ["no CUDA device (torch.cuda.is_available() is False)"]
    with pytest.raises(BackendUnavailable, match=r"^TensorRT backend unavailable: no CUDA device.*--backend onnx"):
        Backend.TENSORRT.spec.require("cpu")
    with pytest.raises(BackendUnavailable, match=r"^Torch-TensorRT backend unavailable: no CUDA device.*"
                                                 r"`torch_tensorrt`.*--backend compile"):
        Backend.TORCH_TENSORRT.spec.require("cuda")


def test_stage_entries_round_trip_and_refuse_unknown_fields():
    entry = StageEntry(backend="onnx", precision="fp8", profile={"latents": [[1, 2], [1, 2], [1, 2]]},
                       file="video_decoder/denoise.onnx", fp8_scales="video_decoder/denoise.fp8.safetensors",
                       fp8_layers=12, ort_vs_eager={"velocity": 1e-3})
    component = ComponentEntry("fp8", {"denoise": entry})
    assert ComponentEntry.from_dict(component.to_dict()) == component
    assert StageEntry("eager", "float32").to_dict() == {"backend": "eager", "precision": "float32"}
    assert entry.built and not StageEntry("eager", "float32").built
    with pytest.raises(ArtifactError, match=r"rebuild needed: .*\['engine_path'\]"):
        StageEntry.from_dict({"backend": "tensorrt", "precision": "fp8", "engine_path": "x.plan"})
