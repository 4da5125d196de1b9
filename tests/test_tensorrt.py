"""TensorRT layer on the CPU: the capability check (the registry's, shared by the builder and the runners), the
build config (strongly typed: no precision flags), the timing-cache key."""
import sys
import types

import pytest
import torch

from foresight_engine.builders.tensorrt import (
    OptimizationProfile,
    TensorRTBuildConfig,
    build_engine,
    timing_cache_key,
    timing_cache_path,
)
from foresight_engine.engine.runners.buffers import BufferPlan
from foresight_engine.engine.runners.tensorrt import TensorRTStage, require_tensorrt
from foresight_engine.errors import BackendUnavailable, ConfigError

PROFILE = {"latents": ((1, 64, 128), (1, 256, 128), (2, 1024, 128)), "timestep": ((1,), (1,), (2,))}


def _fake_tensorrt(monkeypatch, version: str | None, cuda: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    if version is None:
        monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    else:
        monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__=version))


def test_capability_check_names_everything_missing(monkeypatch, tmp_path):
    _fake_tensorrt(monkeypatch, None, cuda=False)
    for call in (require_tensorrt, lambda: build_engine("m.onnx", TensorRTBuildConfig(), tmp_path / "e.plan"),
                 lambda: TensorRTStage(tmp_path / "e.plan", BufferPlan((), ()))):
        with pytest.raises(BackendUnavailable) as exc:
            call()
        msg = str(exc.value)
        assert "no CUDA device" in msg and "`tensorrt` Python package is not importable" in msg
        assert "foresight-engine[tensorrt]" in msg and "--backend onnx" in msg
    assert not (tmp_path / "e.plan").exists()


def test_capability_check_version_and_success(monkeypatch):
    _fake_tensorrt(monkeypatch, "8.6.1", cuda=True)
    with pytest.raises(BackendUnavailable, match=r"tensorrt 8\.6\.1 is too old: version >= 10") as exc:
        require_tensorrt()
    assert "CUDA" not in str(exc.value)
    _fake_tensorrt(monkeypatch, "10.13.0.35", cuda=True)
    assert require_tensorrt().__version__ == "10.13.0.35"


def test_config_json_round_trip_and_profile_from_dict():
    config = TensorRTBuildConfig.from_profile(PROFILE, workspace_bytes=1 << 30, optimization_level=5)
    (profile,) = config.profiles
    assert [i.name for i in profile.inputs] == ["latents", "timestep"]
    assert profile.inputs[0].opt == (1, 256, 128) and profile.inputs[1].max == (2,)
    again = TensorRTBuildConfig.from_json(config.to_json())
    assert again == config and again.to_dict() == config.to_dict()
    assert set(config.to_dict()) == {"profiles", "workspace_bytes", "optimization_level"}  # no precision flags


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        ({"x": ((1, 8), (1, 4), (1, 16))}, r"'x' dim 1: need min <= opt <= max, got 8, 4, 16"),
        ({"x": ((1, 8), (1, 8, 2), (1, 16))}, "ranks differ"),
        ({"x": ((1,), (1,), (-1,))}, "negative"),
        ({"x": ((1.5,), (2,), (3,))}, "ints"),
        ({"": ((1,), (1,), (1,))}, "non-empty"),
        ({}, "distinct input names"),
    ],
)
def test_profile_validation_names_the_bad_value(shapes, match):
    with pytest.raises(ConfigError, match=match):
        OptimizationProfile.from_dict(shapes)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"profiles": "xy"}, "OptimizationProfile"),
        ({"workspace_bytes": 0}, "workspace_bytes"),
        ({"optimization_level": 7}, "optimization_level"),
    ],
)
def test_config_validation_names_the_bad_value(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TensorRTBuildConfig(**kwargs)


def test_profiles_must_cover_the_same_inputs():
    x, y = (OptimizationProfile.from_dict({n: ((1,), (1,), (1,))}) for n in "xy")
    with pytest.raises(ConfigError, match="same inputs"):
        TensorRTBuildConfig(profiles=(x, y))


def test_config_from_dict_refuses_unknown_keys_and_bad_profiles():
    for flag in ("fp16", "fp8", "strongly_typed"):  # TensorRT 11 has no precision flags: refused, naming why
        with pytest.raises(ConfigError, match=rf"\['{flag}'\].*strongly typed"):
            TensorRTBuildConfig.from_dict({flag: True})
    with pytest.raises(ConfigError, match="min/opt/max"):
        OptimizationProfile.from_dict({"x": {"min": [1], "max": [2]}})
    with pytest.raises(ConfigError, match=r"\(min, opt, max\)"):
        OptimizationProfile.from_dict({"x": ((1,), (2,))})


def test_timing_cache_key_changes_with_version_and_sm(tmp_path):
    key = timing_cache_key("10.3.0", (9, 0))
    assert key == "trt10.3.0-sm90" == timing_cache_key("10.3.0", 90)
    assert len({key, timing_cache_key("10.4.0", (9, 0)), timing_cache_key("10.3.0", (8, 9))}) == 3
    assert timing_cache_path(tmp_path, "10.3.0", (9, 0)) == tmp_path / "timing-trt10.3.0-sm90.cache"
    with pytest.raises(ConfigError, match="version"):
        timing_cache_key("../x", (9, 0))
    with pytest.raises(ConfigError, match="SM"):
        timing_cache_key("10.3.0", "sm90")
