"""foresight-engine: fast inference for one reasoning step of a vision-language world model."""
from .config import ModelConfig, preset
from .engine import Engine, Prediction, Timings
from .errors import ForesightError

__version__ = "0.1.0"
__all__ = ["Engine", "ForesightError", "ModelConfig", "Prediction", "Timings", "preset", "__version__"]
