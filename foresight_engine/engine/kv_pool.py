"""KV caches of the requests in flight: allocated once (lazily, at most one per admitted request) and reused.

The request registry admits at most `size` requests, so a free cache is always there or may be allocated; a
session owns its own cache instead (its conversation stays in it between steps)."""
from __future__ import annotations

import threading
from typing import Callable

from ..models.kv_cache import KVCache


class KVCachePool:
    def __init__(self, allocate: Callable[[], KVCache], size: int):
        self._allocate = allocate
        self._size = size
        self._free: list[KVCache] = []
        self._lock = threading.Lock()

    def acquire(self) -> KVCache:
        with self._lock:
            cache = self._free.pop() if self._free else None
        cache = cache if cache is not None else self._allocate()
        cache.crop(0)
        return cache

    def release(self, cache: KVCache) -> None:
        with self._lock:
            if len(self._free) < self._size:
                self._free.append(cache)
