import numpy as np
import pytest

from foresight_engine import Engine
from foresight_engine.builders.build import build
from foresight_engine.models.export_spec import BuildShape
from foresight_engine.models.glp import GLPModel


@pytest.fixture(scope="session")
def engine_of():
    """`engine_of(preset)`: one engine of that preset with seed 0 per session (tiny variants: `tiny-hunyuan15`,
    `tiny-hybrid`), shared by every test that does not change weights."""
    engines: dict[str, Engine] = {}

    def get(name: str) -> Engine:
        if name not in engines:
            engines[name] = Engine.from_preset(name, seed=0)
        return engines[name]
    return get


@pytest.fixture(scope="session")
def engine(engine_of) -> Engine:
    """The tiny preset with seed 0: shared by every test that does not change weights."""
    return engine_of("tiny")


@pytest.fixture(scope="session")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(72, 96, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def other_image() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(72, 96, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny() -> GLPModel:
    """A fresh tiny model per test module (modules that build artifacts from it)."""
    return GLPModel.from_preset("tiny", 0)


@pytest.fixture(scope="module")
def shape(tiny) -> BuildShape:
    """The tiny preset's default build shape."""
    return BuildShape.for_config(tiny.config)


@pytest.fixture()
def no_models(engine, monkeypatch):
    """Any model call fails the test: validation must happen first."""
    def boom(*a, **k):
        raise AssertionError("a model ran before validation finished")
    for name in ("vision", "prefill", "adapt", "denoise", "decode_video", "decode_text"):
        monkeypatch.setattr(engine, name, boom)
    return engine


@pytest.fixture(scope="session")
def eager_fp32(tmp_path_factory):
    """One eager fp32 artifact of tiny/seed 0, built with the accuracy gate on; tests that change it copy it first."""
    return build(GLPModel.from_preset("tiny", 0), tmp_path_factory.mktemp("art") / "eager_fp32", backend="eager",
                 precision="fp32")
