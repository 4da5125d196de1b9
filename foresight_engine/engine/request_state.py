"""Per-request runtime state (cancel flag, deadline, event sink) and the bounded registry of in-flight requests.

Every in-flight request has its own `RequestState`; `check()` reads only host-side flags (a threading.Event and the
clock, never a device value), so it can run anywhere: at every text token, every denoising step, between the
transformer blocks inside a step and between the VAE's blocks (`models/interrupts.py`), and while waiting for a
stage lock. `cancel()` and `timeout_s` take effect at the next of these.
"""
from __future__ import annotations

import threading
import time
import uuid
from contextlib import contextmanager
from typing import Callable

from ..errors import EngineClosed, InvalidInputError, QueueFull, RequestCancelled, RequestTimeout
from .events import Event


MAX_REQUEST_ID = 256


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
        self._cancel_error: RequestCancelled | None = None
        self._aborted = threading.Event()

    def cancel(self, error: RequestCancelled | None = None) -> None:
        """Stop at the next check, raising `error` (default: `RequestCancelled` naming the request)."""
        if not self._cancelled.is_set():
            self._cancel_error = error
            self._cancelled.set()

    def abort(self) -> None:
        """Tell the other branch to stop (this branch has failed)."""
        self._aborted.set()

    def check(self) -> None:
        """Raise if the request was cancelled, ran out of time, or its other branch failed."""
        if self._cancelled.is_set():
            raise self._cancel_error or RequestCancelled(f"request {self.request_id!r} was cancelled")
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise RequestTimeout(f"request {self.request_id!r} ran past its timeout_s={self.timeout_s}")
        if self._aborted.is_set():
            raise BranchAborted(self.request_id)

    @contextmanager
    def holding(self, lock: threading.Lock, stage: str, poll_s: float = 0.02):
        """Acquire the stage lock of `stage` within the request's deadline (the wait counts against `timeout_s`:
        `RequestTimeout` names the wait), still honouring cancel while waiting."""
        start = time.perf_counter()
        while True:
            left = poll_s if self.deadline is None else min(poll_s, self.deadline - time.perf_counter())
            if left > 0 and lock.acquire(timeout=left):
                break
            if self.deadline is not None and time.perf_counter() >= self.deadline:
                raise RequestTimeout(f"request {self.request_id!r} ran past its timeout_s={self.timeout_s} waiting "
                                     f"{time.perf_counter() - start:.2f} s for the {stage} stage (held by another "
                                     "request)")
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
        self._closed: str | None = None  # why the engine no longer takes requests

    def __len__(self) -> int:
        return len(self._states)

    def admit(self, request_id: str | None, timeout_s: float | None,
              emit: Callable[[Event], None] | None = None) -> RequestState:
        if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float))
                                      or not 0 < timeout_s < float("inf")):
            raise InvalidInputError(f"timeout_s={timeout_s!r} must be a finite number > 0 (or None)")
        request_id = request_id if request_id is not None else uuid.uuid4().hex
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_REQUEST_ID:
            raise InvalidInputError(f"request_id={request_id!r:.100} must be a non-empty string of at most "
                                    f"{MAX_REQUEST_ID} characters")
        with self._lock:
            if self._closed is not None:
                raise EngineClosed(f"{self._closed}: not taking new requests")
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

    def close(self, reason: str) -> int:
        """Refuse new requests and cancel every one in flight with `EngineClosed(reason)`; returns how many."""
        with self._lock:
            self._closed = reason
            states = list(self._states.values())
        for state in states:
            state.cancel(EngineClosed(f"request {state.request_id!r} cancelled: {reason}"))
        return len(states)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no request is in flight (True), at most `timeout_s` (False)."""
        deadline = time.monotonic() + timeout_s
        while self._states:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True
