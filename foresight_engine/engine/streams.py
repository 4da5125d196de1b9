"""The branches' CUDA streams: vision + prefill on the front stream, then the video branch (adapter -> denoise ->
VAE) and the text branch (decode) on streams of their own, each waiting on an event recorded after the prefill
(the world latent and the prompt's KV cache are ready), so text decoding overlaps a replaying denoising graph.
The hybrid encoder's DINOv2 runs on a `spatial` stream from the start (its input is the request's image), beside
vision + prefill; the video branch waits on its event before the adapter.
On the CPU the same calls are no-ops: one code path for both.
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Iterator

import torch


class BranchStreams:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self._streams = {name: torch.cuda.Stream(device) for name in ("front", "spatial", "video", "text")}

    def front(self):
        """Context for vision + prefill."""
        return torch.cuda.stream(self._streams["front"]) if self.cuda else nullcontext()

    def handoff(self) -> "torch.cuda.Event | None":
        """An event after the work queued so far on the front stream (call at the end of the prefill)."""
        return self.record("front")

    def record(self, name: str) -> "torch.cuda.Event | None":
        """An event after the work queued so far on stream `name`."""
        if not self.cuda:
            return None
        event = torch.cuda.Event()
        event.record(self._streams[name])
        return event

    def wait(self, event: "torch.cuda.Event | None", *inputs: torch.Tensor) -> None:
        """The current stream waits for `event`; `inputs` (made on the event's stream) are marked as used by it."""
        if not self.cuda:
            return
        stream = torch.cuda.current_stream()
        stream.wait_event(event)
        for tensor in inputs:
            tensor.record_stream(stream)

    @contextmanager
    def branch(self, name: str, handoff: "torch.cuda.Event | None" = None, *inputs: torch.Tensor) -> Iterator[None]:
        """Context for the `spatial`, `video` or `text` branch: its stream waits for `handoff` (if any); `inputs`
        (made on the front stream) are marked as used by this stream so the caching allocator keeps them until it
        is done."""
        if not self.cuda:
            yield
            return
        stream = self._streams[name]
        if handoff is not None:
            stream.wait_event(handoff)
        for tensor in inputs:
            tensor.record_stream(stream)
        with torch.cuda.stream(stream):
            yield
