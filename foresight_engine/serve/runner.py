"""Engine calls on worker threads, so the event loop keeps serving while a request runs.

The engine is thread-safe (each request has its own state) and queues requests itself: the pool only has to
hold one thread per request the engine may admit, which it then either runs, queues or refuses (QueueFull).
"""
from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class EngineRunner:
    def __init__(self, threads: int):
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="foresight-serve")

    def submit(self, fn: Callable[..., T], *args, **kwargs) -> Future[T]:
        return self._pool.submit(fn, *args, **kwargs)

    async def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def iterate(self, make_iterator: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
        """Items of a blocking iterator, drawn on a worker thread. Leaving early does not stop the iterator:
        the caller stops it (`engine.cancel`)."""
        loop = asyncio.get_running_loop()
        items: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue()

        def put(last: bool, value: Any) -> None:
            try:
                loop.call_soon_threadsafe(items.put_nowait, (last, value))
            except RuntimeError:  # the loop is closed: the server is shutting down
                log.debug("dropped a stream item after the event loop closed")

        def pump() -> None:
            try:
                for item in make_iterator():
                    put(False, item)
            except BaseException as exc:  # handed to the consumer, re-raised there
                put(True, exc)
            else:
                put(True, None)

        self._pool.submit(pump)
        while True:
            last, value = await items.get()
            if last:
                if value is not None:
                    raise value
                return
            yield value

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
