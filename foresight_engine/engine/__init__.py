"""Runtime: loads models or artifacts and runs reasoning steps. Never imports `builders/`."""
from .engine import Engine, PreparedRequest
from .events import DenoiseStep, Done, Event, FramesReady, TextToken
from .prediction import Prediction, Timings
from .session import Session
from .threads import ThreadSplit

__all__ = ["DenoiseStep", "Done", "Engine", "Event", "FramesReady", "PreparedRequest", "Prediction", "Session",
           "TextToken", "ThreadSplit", "Timings"]
