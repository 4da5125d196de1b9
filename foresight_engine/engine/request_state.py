"""Per-request runtime state (cancel flag, deadline, event sink) and the bounded registry of in-flight requests.

Every in-flight request has its own `RequestState`; the branches check it at every denoising step and every text
token (`check()`), so `cancel()` and `timeout_s` take effect at the next step.
"""
from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager
from typing import Callable

from ..errors import InvalidInputError, QueueFull, RequestCancelled, RequestTimeout
from .events import Event


class BranchAborted(Exception):
    """The other branch of the same request failed; its own error is the one raised to the caller."""


class RequestState:
    def __init__(self, request_id: str, timeout_s: float | None, emit: Callable[[Event], None] | None):
        self.request_id = request_id
        self.started = time.perf_counter()
        self.deadline = None if timeout_s is None else self.started + timeout_s
        self.timeout_s = timeout_s
        self.emit = emit or (lambda event: None)
        self.streaming = emit is not None  # text events cost a detokenisation per token: only when listened to
        self._cancelled = threading.Event()
        self._aborted = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def abort(self) -> None:
        """Tell the other branch to stop (this branch has failed)."""
        self._aborted.set()

    def check(self) -> None:
        """Raise if the request was cancelled, ran out of time, or its other branch failed."""
        if self._cancelled.is_set():
            raise RequestCancelled(f"request {self.request_id!r} was cancelled")
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise RequestTimeout(f"request {self.request_id!r} ran past its timeout_s={self.timeout_s}")
        if self._aborted.is_set():
            raise BranchAborted(self.request_id)

    @contextmanager
    def holding(self, lock: threading.Lock, poll_s: float = 0.02):
        """Acquire a stage lock while still honouring cancel/timeout during the wait."""
        while not lock.acquire(timeout=poll_s):
            self.check()
        try:
            yield
        finally:
            lock.release()


class RequestRegistry:
    """In-flight requests, at most `max_size`: `admit` raises `QueueFull` at once beyond that."""

    def __init__(self, max_size: int):
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise InvalidInputError(f"max_queue_size={max_size!r} must be an integer >= 1")
        self.max_size = max_size
        self._states: dict[str, RequestState] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._states)

    def admit(self, request_id: str | None, timeout_s: float | None,
              emit: Callable[[Event], None] | None = None) -> RequestState:
        if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
                                      or not timeout_s > 0):
            raise InvalidInputError(f"timeout_s={timeout_s!r} must be a number > 0 (or None)")
        request_id = request_id if request_id is not None else uuid.uuid4().hex
        if not isinstance(request_id, str) or not request_id:
            raise InvalidInputError(f"request_id={request_id!r} must be a non-empty string")
        with self._lock:
            if request_id in self._states:
                raise InvalidInputError(f"request_id={request_id!r} is already in flight")
            if len(self._states) >= self.max_size:
                raise QueueFull(f"{len(self._states)} requests in flight (max_queue_size={self.max_size}); "
                                "retry later")
            state = RequestState(request_id, timeout_s, emit)
            self._states[request_id] = state
            return state

    def release(self, state: RequestState) -> None:
        with self._lock:
            self._states.pop(state.request_id, None)

    def cancel(self, request_id: str) -> bool:
        """True if `request_id` is in flight (it stops at its next step); False if unknown or finished."""
        with self._lock:
            state = self._states.get(request_id)
        if state is None:
            return False
        state.cancel()
        return True
