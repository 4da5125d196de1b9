import numpy as np
import pytest

from foresight_engine import Engine
from foresight_engine.builders.build import build
from foresight_engine.models.glp import GLPModel


@pytest.fixture(scope="session")
def engine() -> Engine:
    """The tiny preset with seed 0: shared by every test that does not change weights."""
    return Engine.from_preset("tiny", seed=0)


@pytest.fixture(scope="session")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(72, 96, 3), dtype=np.uint8)


@pytest.fixture(scope="session")
def other_image() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(72, 96, 3), dtype=np.uint8)


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
