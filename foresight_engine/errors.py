"""Every error the engine raises on purpose. Each message names the bad value."""
from __future__ import annotations


class ForesightError(Exception):
    """Base of all foresight-engine errors.

    `argument` names the API argument an error is about when the message does not start with it (e.g. the
    directory given to `Engine.load`), so that a front end can name its own spelling of it: the CLI names the
    flag the user typed (`foresight_engine/cli/flags.py`)."""

    def __init__(self, *args, argument: str | None = None):
        super().__init__(*args)
        self.argument = argument


class ConfigError(ForesightError, ValueError):
    """A config value is invalid or inconsistent."""


class UnknownPresetError(ConfigError):
    """The preset name is not one of the known presets."""


class InvalidInputError(ForesightError, ValueError):
    """A request argument (size, frame count, steps, prompt, images) is invalid."""


class ImageError(InvalidInputError):
    """An image cannot be read or is empty."""


class PromptError(InvalidInputError):
    """A prompt is empty or longer than the context allows."""


class RequestTooLarge(InvalidInputError):
    """A request's estimated cost (token passes) exceeds the engine's budget (`Engine(max_request_cost=...)`)."""


class WeightsError(ForesightError):
    """A checkpoint is missing, partial, of the wrong shape, or not safetensors."""


class ArtifactError(ForesightError):
    """A built artifact is missing, stale or tampered with: the message says `rebuild needed: <factor>`."""


class VideoError(InvalidInputError):
    """A video file is missing, corrupt or empty, or frames to encode are malformed."""


class WeightsMissingError(WeightsError):
    """A weights file is not where it was looked for; the message names the path and how to provide it."""


class QueueFull(ForesightError):
    """The engine's bounded request queue is full; retry later."""


class RequestCancelled(ForesightError):
    """The request was cancelled (`Engine.cancel(request_id)` or a disconnected client)."""


class RequestTimeout(ForesightError):
    """The request ran past its `timeout_s` (running, or waiting for a stage another request holds)."""


class EngineClosed(RequestCancelled):
    """The engine is shutting down (`Engine.shutdown()`, a server's SIGTERM): requests in flight are cancelled and
    new ones refused."""


class NonFiniteError(ForesightError):
    """A stage produced NaN or inf (`stage` names it): raised instead of returning a black or garbage video."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


class BackendUnavailable(ForesightError):
    """A backend cannot run on this machine (no CUDA device, package missing or too old); the message names what."""


class DeviceUnavailable(BackendUnavailable):
    """The requested device is not on this machine (e.g. `cuda` without a CUDA GPU); the message names it."""


class GraphCaptureError(ForesightError):
    """A CUDA graph cannot capture this work: a tensor it reads is not on a CUDA device, or the work reads values
    back to the host. Raised instead of capturing an empty or wrong graph."""


class CalibrationError(ForesightError, ValueError):
    """FP8 calibration got no usable data (no batches, a non-finite activation, a scale for an unknown layer)."""


class AccuracyGateError(ForesightError):
    """A build missed an accuracy threshold; the message names each component, metric, value and limit."""


class MissingExtraError(ForesightError, ImportError):
    """An optional feature's packages are not installed; the message names the extra to install."""


class EngineBuildError(ForesightError):
    """An accelerator engine could not be built (ONNX parser or TensorRT builder failure); the message says why."""


class KernelError(ForesightError, ValueError):
    """A custom kernel (`foresight_engine.kernels`) got inputs it does not take, or its native library failed."""
