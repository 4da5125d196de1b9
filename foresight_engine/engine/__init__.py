"""Runtime: loads models or artifacts and runs reasoning steps. Never imports `builders/`."""
from .engine import Engine, PreparedRequest
from .prediction import Prediction, Timings

__all__ = ["Engine", "PreparedRequest", "Prediction", "Timings"]
