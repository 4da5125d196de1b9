import numpy as np
import pytest

from foresight_engine import Engine


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
