"""`Session`: a multi-step conversation whose KV cache is kept from step to step.

Each step renders the whole conversation (earlier turns, the model's answers as assistant turns, the new user
turn), finds the longest prefix already in the session's cache (the earlier prompts and the fed answer tokens),
keeps those slots (`KVCache.crop`) and prefills only the rest: new images go through the vision tower, old ones do
not. The result equals a fresh `predict()` over the whole conversation (same tokens; the world latent within float
tolerance).
"""
from __future__ import annotations

import threading
from typing import Sequence

from ..models.kv_cache import KVCache
from .engine import Engine, PreparedRequest, ReusedPrefix
from .prediction import Prediction
from .request import ImageInput


class Session:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.messages: list[dict] = []
        self.images: list[ImageInput] = []
        self._cache: KVCache | None = None  # this conversation's cache (allocated at the first step)
        self._cached_ids: list[int] = []  # the tokens whose keys/values it holds, in order
        self._lock = threading.Lock()  # one step at a time

    def predict(self, images: ImageInput | Sequence[ImageInput], prompt: str, *, request_id: str | None = None,
                timeout_s: float | None = None, **settings) -> Prediction:
        new_images = list(images) if isinstance(images, (list, tuple)) else [images]
        turn = {"role": "user", "content": [{"type": "image"}] * len(new_images) + [{"type": "text", "text": prompt}]}
        with self._lock:
            messages = self.messages + [turn]
            engine = self.engine
            request = engine.prepare(self.images + new_images, messages=messages, **settings)
            if self._cache is None:
                self._cache = engine.new_cache()
            try:
                prediction, _ = engine._run(engine._registry.admit(request_id, timeout_s), request,
                                            self._reuse(request))
            except BaseException:
                self._cached_ids = []  # the cache may hold a half-written step: start over
                raise
            fed = prediction.token_ids[:-1]  # the last token was never fed through the model
            self._cached_ids = request.input_ids[0].tolist() + fed
            self.messages = messages + [{"role": "assistant", "content": prediction.text}]
            self.images = self.images + new_images
            return prediction

    def _reuse(self, request: PreparedRequest) -> ReusedPrefix:
        """The cached prefix of `request`, cut back to the start of an image it would split (may be empty)."""
        ids = request.input_ids[0].tolist()
        n = 0
        limit = min(len(ids) - 1, len(self._cached_ids))  # at least one new token must run
        while n < limit and ids[n] == self._cached_ids[n]:
            n += 1
        first_image = 0
        image_token = self.engine.model.backbone.image_token_id
        merge = self.engine.config.vision.spatial_merge_size ** 2
        starts = [i for i, t in enumerate(ids) if t == image_token and (i == 0 or ids[i - 1] != image_token)]
        sizes = (request.image_grid_thw.prod(-1) // merge).tolist()
        for start, size in zip(starts, sizes):
            if start + size <= n:
                first_image += 1
            else:
                n = min(n, start)
                break
        return ReusedPrefix(cache=self._cache, length=n, first_image=first_image)
