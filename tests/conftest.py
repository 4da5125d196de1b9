import numpy as np
import pytest

from foresight_engine import Engine


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
