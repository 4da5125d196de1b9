"""`run_until_signalled`: uvicorn in the foreground that stops within a bounded grace period on SIGTERM/SIGINT.

uvicorn alone stops accepting connections on a signal, then waits for every open one to finish, with no limit by
default, while the engine keeps computing the requests in flight. Here the first signal also closes the app
(`_Server.close`: new requests get 503, requests in flight are cancelled and stop within one block, their clients
get 503); connections still open after `grace_s` are cancelled by uvicorn; and if the process has not exited
`grace_s + HARD_EXIT_MARGIN_S` after the signal (a call that cannot be interrupted), it exits anyway (status 1).
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable

import uvicorn

log = logging.getLogger(__name__)

HARD_EXIT_MARGIN_S = 5.0


class _GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], object], grace_s: float):
        super().__init__(config)
        self._on_signal = on_signal
        self._grace_s = grace_s

    def handle_exit(self, sig: int, frame) -> None:
        first = not self.should_exit
        super().handle_exit(sig, frame)
        if first:
            # not in the signal handler itself: closing takes locks the interrupted thread may hold
            threading.Thread(target=self._on_signal, name="foresight-serve-close", daemon=True).start()
            deadline = self._grace_s + HARD_EXIT_MARGIN_S
            watchdog = threading.Timer(deadline, _hard_exit, args=(deadline,))
            watchdog.daemon = True
            watchdog.start()


def _hard_exit(after_s: float) -> None:
    log.error("still running %.0f s after the shutdown signal: exiting now", after_s)
    os._exit(1)


def run_until_signalled(app, *, host: str, port: int, grace_s: float = 10.0, **uvicorn_options) -> None:
    """Serve `app` (made by `create_app`) until SIGTERM/SIGINT, then shut down as the module docstring says."""
    config = uvicorn.Config(app, host=host, port=port, timeout_graceful_shutdown=max(1, round(grace_s)),
                            **uvicorn_options)
    server = _GracefulServer(config, lambda: app.state.foresight.close("the server is shutting down"), grace_s)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it handled once it has shut down
        pass


__all__ = ["HARD_EXIT_MARGIN_S", "run_until_signalled"]
