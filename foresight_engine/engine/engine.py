"""`Engine`: one reasoning step, images + conversation in, text answer + predicted video out.

The engine has one device (`Engine(model, device="cuda")`): weights move there once, request tensors are made
there, and the host sees only the boundaries (one token id per decoded token, the frames once). Every stage is a
function the engine calls (tensors in, tensors out): the eager stage wrappers (`models/stages.py`) or, for an
artifact (`Engine.load`), the functions its backend's runners load (`engine/runners/`). Around them:
- after the prefill, the video branch (adapter -> denoise -> VAE) runs in a worker thread while the text branch
  decodes in the caller's thread (`overlap=True`), each on its own CUDA stream on a GPU (`streams.py`) and with
  its own CPU thread count (`ThreadSplit`); with the hybrid encoder, DINOv2 encodes the conditioning image in a
  third branch beside vision + prefill, and the video branch waits for it before the adapter;
- stage locks make a small pipeline across requests: the next request's vision + prefill runs while the previous
  request's video is denoised; `max_queue_size` bounds the requests in flight (`QueueFull` beyond);
- the denoising loop is `models/denoising.py`'s, with the velocity from the static plan (`static=True`), the
  plain transformer forward (`static=False`, the eager reference) or a built stage (a compile artifact's is the
  static plan's whole step, compiled ahead of time: the loop runs it as its step program), all provided by the
  config's decoder family (`models/families.py`: the engine never names one); on CUDA it can be replayed as
  one CUDA graph (`cuda_graphs=True`, `graphs.py`); the text decode runs on one preallocated KV cache
  (`models/kv_cache.py`) per request in flight;
- `cancel(id)` and `timeout_s` are checked at every text token, every denoising step and, inside a step, before
  every transformer block and every VAE block (`models/interrupts.py`: a host flag, no sync); waiting for a stage
  lock counts against `timeout_s`; `shutdown()` cancels everything in flight; `stream()` yields typed events;
- every request is validated and costed before any model runs (`request.py`: limits from
  `config.generation.limits`, a budget in token passes, control tokens refused), and NaN/inf at a stage boundary
  is a typed error naming the stage (`finite.py`).
Results equal the eager reference: same tokens, frames within fp32 tolerance.
"""
from __future__ import annotations

import asyncio
import logging
import math
import queue
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Callable, ContextManager, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..config import ModelConfig
from ..device import resolve_device
from ..errors import ArtifactError, ConfigError, GraphCaptureError, PromptError
from ..models import denoising
from ..models.glp import GLPModel
from ..models.interrupts import add_interruption_points, interruptible
from ..models.kv_cache import KVCache, attention_span, decode_step, default_length
from ..models.stages import AdapterStage, DecodeStage, PrefillStage, SpatialStage, VAEDecodeStage, VisionStage
from ..models.static_velocity import step_program
from ..models.video_geometry import VideoGeometry
from ..models.vision_tower import VisionLayout
from ..verify import verify
from ..verify.clips import load_clip
from .events import DenoiseStep, Done, Event, FramesReady, TextToken
from .finite import FiniteGuard
from .graphs import GraphedDenoiser
from .kv_pool import KVCachePool
from .prediction import Prediction, Timings
from .request import (ImageInput, Settings, TextGuard, build_messages, check_cost, check_prompt_length, load_images,
                      resolve_settings)
from .request_state import BranchAborted, RequestRegistry, RequestState
from .runners import BuiltStages
from .streams import BranchStreams
from .threads import ThreadSplit, use_threads

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

RUNTIME_OPTIONS = ("device", "progress", "max_queue_size", "overlap", "static", "step_cache", "threads",
                   "cuda_graphs", "max_seq_len", "max_request_cost")


@dataclass
class PreparedRequest:
    """A validated request, tokenised and pre-processed; no model has run yet. Host-side metadata only."""

    settings: Settings
    images: list[Image.Image]
    input_ids: torch.Tensor  # [1, S]
    pixel_values: torch.Tensor  # [N_patches, C*T*P*P]
    image_grid_thw: torch.Tensor  # [n_images, 3]
    mm_token_type_ids: torch.Tensor  # [1, S]
    geometry: VideoGeometry  # the video's latent grid and RoPE scale, computed once
    spatial_pixels: torch.Tensor | None = None  # [1, 3, S, S] DINOv2's input (the hybrid encoder only)
    actual: np.ndarray | None = None  # uint8 [F, H, W, 3]: what really happened, to verify the prediction against


@dataclass
class ReusedPrefix:
    """A KV cache whose first `length` slots hold the start of a request (a session's earlier steps)."""

    cache: KVCache
    length: int
    first_image: int  # images before this one are already in the cache


@dataclass
class PrefillOutput:
    logits: torch.Tensor  # [B, V] at the last prompt position
    world_latent: torch.Tensor  # [B, Q, D]
    next_position: torch.Tensor  # [B] the (text) rope position of the first answer token
    cache: KVCache  # holds the prompt's keys/values (not the query tokens'); the decode appends to it


class Engine:
    def __init__(self, model: GLPModel, *, device: str | torch.device | None = None, built: BuiltStages | None = None,
                 progress: bool = False, max_queue_size: int = 8, overlap: bool = True, static: bool = True,
                 step_cache: float | None = None, threads: ThreadSplit | None = None, cuda_graphs: bool = False,
                 max_seq_len: int | None = None, max_request_cost: int | None = None):
        """`device`: where weights and requests live (`cpu`, `cuda`, `cuda:N`; None: where the model's weights are,
        the CPU for a fresh model); the model is moved there, in place. `built`: stages loaded from an artifact
        (`Engine.load`). `overlap`: text and video branches at the same time. `static`: the static denoising plan
        (False: the plain transformer forward each step, the eager reference). `step_cache`: first-block-cache
        threshold (None: off). `cuda_graphs`: replay the denoising loop as a CUDA graph (needs device='cuda').
        `max_seq_len`: KV cache slots per request (default: the prompt limit + the longest answer).
        `max_request_cost`: the budget of one request in token passes (`request.RequestCost`; default: the config's
        `generation.limits.max_cost`); costlier requests are refused (`RequestTooLarge`) before any model runs."""
        if step_cache is not None and not (isinstance(step_cache, (int, float)) and step_cache > 0):
            raise ConfigError(f"step_cache={step_cache!r} must be a threshold > 0 (or None to disable)")
        if step_cache is not None and (not static or (built is not None and "denoise" in built.functions)):
            raise ConfigError("step_cache skips the static plan's transformer blocks: it needs static=True and the "
                              "eager denoising step (not a built one)")
        if cuda_graphs and step_cache is not None:
            raise ConfigError("step_cache reads a value back every step, which a CUDA graph cannot; use one")
        self.device = resolve_device(model.device if device is None else device)  # fails at once, naming CUDA
        if cuda_graphs and self.device.type != "cuda":
            raise GraphCaptureError(f"cuda_graphs=True captures CUDA graphs, which need device='cuda' (this engine's "
                                    f"device is {self.device})")
        self.model = model
        self.config: ModelConfig = model.config
        self.built = built
        self.progress = progress
        self.overlap = overlap
        self.static = static
        self.step_cache = step_cache
        self.threads = threads or ThreadSplit()
        self._vision_tables: dict[tuple[int, int, int], tuple[torch.Tensor, ...]] = {}
        self.stages = self._stage_functions(built)
        self.program: denoising.StepProgram = denoising.denoise_step  # how the loop runs one step
        self.velocity = self._velocity_model(built, static, step_cache)
        if cuda_graphs and not self.velocity.graphable:
            raise ConfigError("cuda_graphs=True needs a graph-safe denoising step; this artifact's denoise stage runs "
                              f"on {built.backends['denoise'].value}, which a CUDA graph cannot capture")
        self.max_seq_len = self._cache_length(max_seq_len)
        if max_request_cost is None:
            max_request_cost = self.config.generation.limits.max_cost
        if isinstance(max_request_cost, bool) or not isinstance(max_request_cost, int) or max_request_cost < 1:
            raise ConfigError(f"max_request_cost={max_request_cost!r} must be an integer >= 1 (token passes)")
        self.max_request_cost = max_request_cost
        self.text_guard = TextGuard(model.tokenizer, self.config.processor.max_prompt_tokens)
        for module in (model.video_decoder, model.vae):  # cancel/timeout land within one block of these
            add_interruption_points(module)
        model.to(self.device)  # weights move once, after the precision policy and every check
        self._registry = RequestRegistry(max_queue_size)
        self._caches = KVCachePool(self.new_cache, max_queue_size)
        self._front_lock = threading.Lock()  # vision + prefill: one request at a time
        self._video_lock = threading.Lock()  # adapter -> denoise -> VAE: one request at a time
        self._video_pool = ThreadPoolExecutor(max_workers=max_queue_size, thread_name_prefix="fe-video")
        self._spatial_pool = ThreadPoolExecutor(max_workers=max_queue_size, thread_name_prefix="fe-spatial")
        self.streams = BranchStreams(self.device)
        self._graphs = GraphedDenoiser() if cuda_graphs else None

    def _stage_functions(self, built: BuiltStages | None) -> dict[str, Callable]:
        """{stage: function}: the built ones, else the eager stage wrappers over this engine's weights."""
        m = self.model
        functions = {"prefill": PrefillStage(m.backbone), "decode": DecodeStage(m.backbone),
                     "adapter": AdapterStage(m.adapter),
                     "vae_decode": VAEDecodeStage(m.vae, self.config.generation.decode_timestep)}
        if m.spatial_encoder is not None:
            functions["spatial"] = SpatialStage(m.spatial_encoder)
        functions |= {k: v for k, v in (built.functions if built else {}).items() if k not in ("vision", "denoise")}
        built_vision = built.functions.get("vision") if built else None
        # the vision stage takes one image and its grid's host tables; the eager one bakes in the grid's lengths
        functions["vision"] = lambda pixels, layout: (
            built_vision or VisionStage.for_layout(m.vision_tower, layout))(pixels, *self._tables(layout))
        return functions

    def _tables(self, layout: VisionLayout) -> tuple[torch.Tensor, ...]:
        """`layout`'s tables on this engine's device (copied once per image grid)."""
        tables = self._vision_tables.get(layout.grid)
        if tables is None:
            tables = self._vision_tables.setdefault(layout.grid, layout.to(self.device))
        return tables

    def _velocity_model(self, built: BuiltStages | None, static: bool, step_cache: float | None):
        decoder = self.model.video_decoder
        if built is not None and built.static_denoise:
            # the built whole step runs each step; the static plan's `prepare` still makes its tables, with the
            # custom ops (and so the table layout) the step was built with
            self.program = step_program(built.functions["denoise"])
            return decoder.static_velocity(decoder.transformer, ops=built.denoise_ops)
        if built is not None and "denoise" in built.functions:
            return decoder.stage_velocity(built.functions["denoise"], built.graphable("denoise"))
        return decoder.velocity_model(static, step_cache)

    def _cache_length(self, max_seq_len: int | None) -> int:
        if self.built is not None and "decode" in self.built.functions:
            length = self.built.shape.cache_length(self.config)
            if max_seq_len not in (None, length):
                raise ArtifactError(f"rebuild needed: this artifact's decode stage is built for a KV cache of "
                                    f"{length} slots, not max_seq_len={max_seq_len}")
            return length
        if max_seq_len is None:
            return default_length(self.config)
        if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 2:
            raise ConfigError(f"max_seq_len={max_seq_len!r} must be an integer >= 2")
        return max_seq_len

    def decode_span(self, needed: int) -> int:
        """Slots a decode step attends over: a built decode stage's whole (fixed) buffer, else `attention_span`."""
        if self.built is not None and "decode" in self.built.functions:
            return self.max_seq_len
        return attention_span(needed, self.max_seq_len)

    def new_cache(self) -> KVCache:
        """An empty KV cache of this engine's length, in the backbone's dtype, on its device (zero-filled on the
        front stream, the one whose prefill writes it first)."""
        with self.streams.front():
            return KVCache.allocate(self.config, self.max_seq_len, self.model.backbone.dtype, self.device)

    @classmethod
    def from_preset(cls, name: str, seed: int = 0, **kwargs) -> "Engine":
        """Seeded random weights of preset `name` (`tiny`, `small`); `full` needs real weights. A CUDA `device`
        that is not there fails before any weights are made."""
        resolve_device(kwargs.get("device"))
        return cls(GLPModel.from_preset(name, seed), **kwargs)

    @classmethod
    def load(cls, directory: str | Path, *, device: str | torch.device | None = None, digest: str | None = None,
             **kwargs) -> "Engine":
        """An engine over a built artifact (`foresight-engine build`) on `device` (default: the CPU); the artifact is
        verified whole before anything is deserialized (`ArtifactError("rebuild needed: ...")` otherwise; see
        `artifact.verify`). `digest`: the manifest digest you trust (`foresight-engine inspect` prints it)."""
        from .artifact_loader import load_artifact
        model, built, _ = load_artifact(directory, device, digest)
        return cls(model, device=model.device, built=built, **kwargs)

    @classmethod
    def from_pretrained(cls, vlm: str | Path, decoder: str | Path, glue: str | Path, *, lora: str | Path | None = None,
                        **kwargs) -> "Engine":
        runtime = {k: kwargs.pop(k) for k in RUNTIME_OPTIONS if k in kwargs}
        resolve_device(runtime.get("device"))
        return cls(GLPModel.from_pretrained(vlm, decoder, glue, lora=lora, **kwargs), **runtime)

    # ----------------------------------------------------------------------------------------------- API
    def predict(self, images: ImageInput | Sequence[ImageInput], prompt: str | None = None, *,
                messages: list[dict] | None = None, height: int | None = None, width: int | None = None,
                num_frames: int | None = None, num_inference_steps: int | None = None,
                guidance_scale: float | None = None, max_new_tokens: int | None = None, seed: int = 0,
                frame_rate: int | None = None, request_id: str | None = None, timeout_s: float | None = None,
                on_step: Callable[[int, int], None] | None = None, actual=None) -> Prediction:
        """One reasoning step. `images`: one or more (the last one is the video's first frame); give `prompt`
        (one user turn) or `messages` (a chat). Unset settings take the preset's defaults. `actual` (a video path
        or uint8 [F, H, W, 3]) verifies the predicted clip against what really happened: `Prediction.verification`.
        Safe to call from many threads; raises `QueueFull` at once when `max_queue_size` requests are in flight."""
        request = self.prepare(images, prompt, messages=messages, height=height, width=width, num_frames=num_frames,
                               num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                               max_new_tokens=max_new_tokens, seed=seed, frame_rate=frame_rate, actual=actual)
        emit = None
        if on_step is not None:
            emit = lambda e: on_step(e.step, e.total) if isinstance(e, DenoiseStep) else None  # noqa: E731
        state = self._registry.admit(request_id, timeout_s, emit)
        return self._run(state, request)[0]

    def stream(self, images: ImageInput | Sequence[ImageInput], prompt: str | None = None, *,
               request_id: str | None = None, timeout_s: float | None = None, **kwargs) -> Iterator[Event]:
        """Like `predict`, but yields `TextToken`s and `DenoiseStep`s as they happen (interleaved), then
        `FramesReady`, then `Done` (always last). Bad input and `QueueFull` raise here, at once; leaving the
        iteration early cancels the request."""
        request = self.prepare(images, prompt, **kwargs)
        events: queue.SimpleQueue = queue.SimpleQueue()
        state = self._registry.admit(request_id, timeout_s, events.put)

        def work() -> None:
            try:
                events.put(Done(state.request_id, self._run(state, request)[0]))
            except BaseException as exc:  # handed to the consumer's thread
                events.put(exc)

        threading.Thread(target=work, name=f"fe-stream-{state.request_id}", daemon=True).start()
        return self._drain(events, state.request_id)

    def _drain(self, events: queue.SimpleQueue, request_id: str) -> Iterator[Event]:
        finished = False
        try:
            while True:
                event = events.get()
                if isinstance(event, BaseException):
                    finished = True
                    raise event
                finished = isinstance(event, Done)
                yield event
                if finished:
                    return
        finally:
            if not finished:
                self.cancel(request_id)

    async def apredict(self, *args, request_id: str | None = None, **kwargs) -> Prediction:
        """`predict` for event loops: runs in a worker thread; cancelling the task cancels the request."""
        request_id = request_id or uuid.uuid4().hex
        try:
            return await asyncio.to_thread(self.predict, *args, request_id=request_id, **kwargs)
        except asyncio.CancelledError:
            self.cancel(request_id)
            raise

    async def astream(self, *args, request_id: str | None = None, **kwargs) -> AsyncIterator[Event]:
        """`stream` as an async iterator; closing it (or cancelling its task) cancels the request."""
        request_id = request_id or uuid.uuid4().hex
        events = self.stream(*args, request_id=request_id, **kwargs)
        try:
            while (event := await asyncio.to_thread(next, events, None)) is not None:
                yield event
        finally:
            self.cancel(request_id)

    def cancel(self, request_id: str) -> bool:
        """Stop `request_id` at its next step (its VAE decode is skipped, its buffers freed, its caller gets
        `RequestCancelled`). True if it was in flight; idempotent."""
        return self._registry.cancel(request_id)

    def shutdown(self, reason: str = "the engine is shutting down", wait_s: float = 0.0) -> bool:
        """Refuse new requests (`EngineClosed`) and cancel every one in flight (each stops within one block and
        raises `EngineClosed(reason)` to its caller); wait up to `wait_s` for them to finish. True when none is left
        in flight. Idempotent; a server calls it on SIGTERM."""
        cancelled = self._registry.close(reason)
        log.info("engine shutting down (%s): %d request(s) in flight cancelled", reason, cancelled)
        return self._registry.wait_idle(wait_s)

    def session(self) -> "Session":
        """A multi-step conversation that reuses its KV cache from step to step."""
        from .session import Session
        return Session(self)

    @property
    def in_flight(self) -> int:
        return len(self._registry)

    # ------------------------------------------------------------------------------------------ runtime
    def _run(self, state: RequestState, request: PreparedRequest,
             past: ReusedPrefix | None = None) -> tuple[Prediction, PrefillOutput]:
        cache = None if past is not None else self._caches.acquire()  # a session brings its own
        try:
            return self._execute(state, request, past, cache)
        finally:
            if cache is not None:
                self._caches.release(cache)
            self._registry.release(state)

    def _execute(self, state: RequestState, request: PreparedRequest, past: ReusedPrefix | None,
                 cache: KVCache | None) -> tuple[Prediction, PrefillOutput]:
        timings = Timings()
        spatial = self._spatial_branch(state, request, timings)  # beside vision + prefill (hybrid encoder only)
        with (torch.inference_mode(), state.holding(self._front_lock, "vision+prefill"),
              use_threads(self.threads.front), self.streams.front()):
            state.check()
            with _timed(timings, "vision", state.started):
                image_embeds = self.vision(request, past.first_image if past else 0)
            state.check()
            with _timed(timings, "prefill", state.started):
                prefill = self.prefill(request, image_embeds, past, cache)
            handoff = self.streams.handoff()
        if self.overlap:
            video = self._video_pool.submit(self._video_branch, state, request, prefill.world_latent, timings,
                                            handoff, spatial)
            try:
                token_ids = self._text_branch(state, request, prefill, timings, handoff)
            except BranchAborted:
                video.result()  # raises the video branch's error
                raise
            except BaseException:
                state.abort()
                wait_futures([video])
                raise
            frames, video_latent = video.result()
        else:
            frames, video_latent = self._video_branch(state, request, prefill.world_latent, timings, handoff,
                                                      spatial)
            token_ids = self._text_branch(state, request, prefill, timings, handoff)
        verification = None
        if request.actual is not None:
            with _timed(timings, "verify", state.started):
                verification = verify(frames, request.actual)
        timings.total = time.perf_counter() - state.started
        text = self.model.tokenizer.decode(token_ids, skip_special_tokens=True)
        prediction = Prediction(text=text, token_ids=token_ids, frames=frames, world_latent=prefill.world_latent[0],
                                video_latent=video_latent, timings=timings, settings=request.settings.to_dict(),
                                verification=verification)
        return prediction, prefill

    def _spatial_branch(self, state: RequestState, request: PreparedRequest,
                        timings: Timings) -> Callable[[], "torch.Tensor | None"]:
        """The hybrid encoder's DINOv2 features as a call that waits for them: started now in a worker thread on
        its own stream (`overlap`), else computed when first asked for (one stage after the other)."""
        if request.spatial_pixels is None:
            return lambda: None

        def encode(threads: int) -> tuple[torch.Tensor, "torch.cuda.Event | None"]:
            with (torch.inference_mode(), use_threads(threads), self.streams.branch("spatial"),
                  _timed(timings, "spatial", state.started)):
                features = self.spatial(request)
            return features, self.streams.record("spatial")

        def joined(result: tuple[torch.Tensor, "torch.cuda.Event | None"]) -> torch.Tensor:
            features, done = result
            self.streams.wait(done, features)  # the calling branch's stream waits for the spatial stream's work
            return features

        if not self.overlap:
            return lambda: joined(encode(self.threads.front))
        future = self._spatial_pool.submit(encode, self.threads.spatial)
        return lambda: joined(future.result())

    def _video_branch(self, state: RequestState, request: PreparedRequest, world_latent: torch.Tensor,
                      timings: Timings, handoff=None,
                      spatial: Callable[[], "torch.Tensor | None"] = lambda: None) -> tuple[np.ndarray, torch.Tensor]:
        try:
            threads = self.threads.video if self.overlap else self.threads.front
            guard = FiniteGuard()
            with (torch.inference_mode(), state.holding(self._video_lock, "video"), use_threads(threads),
                  self.streams.branch("video", handoff, world_latent), interruptible(state.check)):
                state.check()
                guard.watch("prefill", world_latent)
                spatial_features = spatial()
                with _timed(timings, "adapter", state.started):
                    conditioning, conditioning_mask = self.adapt(world_latent, spatial_features)
                guard.watch("adapter", conditioning)
                generator = torch.Generator("cpu").manual_seed(request.settings.seed)  # CPU: same noise everywhere

                def on_step(step: int, total: int) -> None:
                    state.emit(DenoiseStep(state.request_id, step, total))
                    state.check()

                with _timed(timings, "denoise", state.started):
                    latents = self.denoise(request, conditioning, conditioning_mask, generator, on_step,
                                           exclusive=lambda: state.holding(self._front_lock, "vision+prefill"))
                guard.watch("denoise", latents)  # after the whole loop: once, also after a CUDA graph's replay
                state.check()  # a cancelled request skips its VAE decode
                with _timed(timings, "vae", state.started):
                    frames = self.decode_video(latents, request.geometry, generator, guard)
            s = request.settings
            guard.check(f" (guidance_scale={s.guidance_scale}, seed={s.seed})")
            state.emit(FramesReady(state.request_id, frames))
            return frames, request.geometry.grid.unpack(latents)[0]
        except BaseException:
            state.abort()
            raise

    def _text_branch(self, state: RequestState, request: PreparedRequest, prefill: PrefillOutput,
                     timings: Timings, handoff=None) -> list[int]:
        tokenizer = self.model.tokenizer
        eos, limit = self.model.token_ids.eos, request.settings.max_new_tokens
        shown = ""

        def on_token(index: int, token_id: int, tokens: list[int]) -> None:
            nonlocal shown
            state.check()
            if state.streaming:
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                last = token_id == eos or index + 1 == limit
                if text.endswith("\ufffd") and not last:
                    text = shown  # hold an incomplete multi-byte character until the next token
                state.emit(TextToken(state.request_id, index, token_id, text[len(shown):]))
                shown = text

        threads = self.threads.text if self.overlap else self.threads.front
        with (torch.inference_mode(), use_threads(threads), _timed(timings, "text", state.started),
              self.streams.branch("text", handoff, prefill.logits, prefill.next_position)):
            return self.decode_text(prefill, request.settings.max_new_tokens, on_token)

    # ------------------------------------------------------------------------------------------- stages
    def prepare(self, images, prompt=None, *, messages=None, actual=None, **settings) -> PreparedRequest:
        """Validate everything and run the (cheap) processor; raises before any model runs."""
        s = resolve_settings(self.config, **settings)
        geometry = VideoGeometry.of(self.config, s.height, s.width, s.num_frames, s.frame_rate)
        check_cost(s, geometry.grid.num_tokens, self.max_request_cost)
        if self.built is not None:  # built (fixed-shape) stages refuse other shapes here, before any model runs
            self.built.check(self.config, geometry, s.cfg_batch)
        actual_frames = None if actual is None else load_clip(actual, "actual")
        pil = load_images(images, self.config.processor.max_images, self.config.generation.limits.max_image_pixels)
        chat = build_messages(prompt, messages, len(pil), self.text_guard)
        processor = self.model.processor
        text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        enc = processor(text=[text], images=pil, return_tensors="pt")
        if self.built is not None:
            self.built.check_images(self.config, enc["image_grid_thw"])
        prompt_tokens = enc["input_ids"].shape[1]
        check_prompt_length(prompt_tokens, self.config.processor.max_prompt_tokens,
                            self.config.adapter.num_query_tokens, s.max_new_tokens,
                            self.config.text.max_position_embeddings)
        if prompt_tokens + max(s.max_new_tokens - 1, 0) > self.max_seq_len:  # the answer's last token is not fed
            raise PromptError(f"prompt of {prompt_tokens} tokens + max_new_tokens={s.max_new_tokens} does not fit "
                              f"this engine's KV cache of {self.max_seq_len} slots (Engine(max_seq_len=...))")
        spatial = self.model.spatial_encoder
        return PreparedRequest(settings=s, images=pil, input_ids=enc["input_ids"], pixel_values=enc["pixel_values"],
                               image_grid_thw=enc["image_grid_thw"], mm_token_type_ids=enc["mm_token_type_ids"],
                               geometry=geometry, actual=actual_frames,
                               spatial_pixels=None if spatial is None else spatial.preprocess(pil[-1]))

    def vision(self, request: PreparedRequest, first_image: int = 0) -> torch.Tensor | None:
        """Visual tokens of images[first_image:]: [N_visual, D_vlm] (None when there are none). One vision-stage
        call per image, with its grid's host-computed tables (`VisionLayout`): fixed shapes per image grid."""
        grids = [tuple(g) for g in request.image_grid_thw.tolist()]  # host metadata
        if len(grids) <= first_image:
            return None
        starts = [0]
        for grid in grids:
            starts.append(starts[-1] + math.prod(grid))
        tokens = [self.stages["vision"](request.pixel_values[starts[i]:starts[i + 1]].to(self.device),
                                        VisionLayout.of(self.config.vision, grids[i]))
                  for i in range(first_image, len(grids))]
        return torch.cat(tokens)

    def prefill(self, request: PreparedRequest, image_embeds: torch.Tensor | None, past: ReusedPrefix | None = None,
                cache: KVCache | None = None) -> PrefillOutput:
        """Prefill the prompt into `cache` (default: a new one); with `past`, only the tokens after `past.length`
        run, on top of its cache."""
        position_ids, _ = self.model.qwen.model.get_rope_index(
            request.input_ids, mm_token_type_ids=request.mm_token_type_ids, image_grid_thw=request.image_grid_thw)
        cache = past.cache if past is not None else cache if cache is not None else self.new_cache()
        cache.crop(past.length if past is not None else 0)
        start = cache.length
        embeds = self.model.backbone.embed(request.input_ids[:, start:].to(self.device), image_embeds)
        positions = position_ids[:, :, start:].to(self.device)  # [3, 1, S]
        logits, world_latent, keys, values = self.stages["prefill"](embeds, positions, *cache.filled())
        cache.append(keys, values)
        return PrefillOutput(logits=logits, world_latent=world_latent,
                             next_position=positions.amax(dim=(0, 2)) + 1, cache=cache)

    def spatial(self, request: PreparedRequest) -> torch.Tensor | None:
        """DINOv2 features of the conditioning image [1, P, D] (None without the hybrid encoder)."""
        if request.spatial_pixels is None:
            return None
        return self.stages["spatial"](request.spatial_pixels.to(self.device))

    def adapt(self, world_latent: torch.Tensor,
              spatial_features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = (world_latent,) if spatial_features is None else (world_latent, spatial_features)
        return self.stages["adapter"](*inputs)

    def video_start(self, request: PreparedRequest, generator: torch.Generator) -> denoising.VideoStart:
        """Where the denoising starts (`VideoStart`): the conditioning image pre-processed and encoded by the VAE,
        then the decoder family's initial latents (and image condition); RNG order follows diffusers'
        image-to-video pipeline, on a CPU generator."""
        s = request.settings
        image = self.model.vae.preprocess(request.images[-1], s.height, s.width)  # [1, 3, H, W]
        image_latents = self.model.vae.encode_image(image.to(self.device), generator)  # [1, C, 1, h, w]
        return self.model.video_decoder.start(request.geometry, image_latents, generator)

    def start_denoising(self, request: PreparedRequest, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
                        generator: torch.Generator) -> tuple[denoising.VelocityState, denoising.DenoiseLoop]:
        """This engine's velocity model's per-request state and the loop, at the request's first step."""
        s, geometry = request.settings, request.geometry
        video = self.video_start(request, generator)
        schedule = self.model.video_decoder.schedule(s.num_inference_steps, geometry.grid.num_tokens, self.device)
        return denoising.start(self.velocity, geometry, video, conditioning, conditioning_mask, schedule,
                               s.guidance_scale)

    def denoise(self, request: PreparedRequest, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
                generator: torch.Generator, on_step: Callable[[int, int], None] | None = None,
                exclusive: Callable[[], ContextManager] = nullcontext) -> torch.Tensor:
        """Packed latents [1, S, C] after every denoising step (`models/denoising.py`), replayed as one CUDA
        graph with `cuda_graphs=True` (captured inside `exclusive()` the first time a shape is seen)."""
        state, loop = self.start_denoising(request, conditioning, conditioning_mask, generator)
        with tqdm(total=loop.num_steps, desc="denoise", disable=not self.progress, leave=False) as bar:
            def step(i: int, n: int) -> None:
                bar.update(1)
                if on_step is not None:
                    on_step(i, n)
            if self._graphs is None:
                return denoising.denoise(self.velocity, state, loop, step, self.program)
            latents = self._graphs.run(self.velocity, state, loop, exclusive, self.program)
            for i in range(loop.num_steps):  # no host sync inside the graph: progress is reported after it
                step(i + 1, loop.num_steps)
            return latents

    def decode_video(self, latents: torch.Tensor, geometry: VideoGeometry, generator: torch.Generator,
                     guard: FiniteGuard | None = None) -> np.ndarray:
        """Packed latents -> uint8 frames [F, H, W, 3] (the one host copy of the video); `guard` watches the decoded
        video before it is clamped (NaN would turn into black frames)."""
        latents = geometry.grid.unpack(latents)
        noise = self.model.vae.decode_noise(latents.shape, generator, self.device)
        video = self.stages["vae_decode"](latents) if noise is None else self.stages["vae_decode"](latents, noise)
        if guard is not None:
            guard.watch("vae_decode", video)
        video = (video[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0)  # [F, H, W, 3]
        return (video * 255).round().to(torch.uint8).cpu().numpy()

    def decode_text(self, prefill: PrefillOutput, max_new_tokens: int,
                    on_token: Callable[[int, int, list[int]], None] | None = None) -> list[int]:
        """Greedy decoding on `prefill.cache`; stops after the end-of-turn token. `on_token(index, id, tokens so
        far)` runs after each token (it may raise to stop). The fed tokens' keys/values stay in the cache (sessions).
        Everything stays on the device; reading each token id is the one host sync per token."""
        eos = self.model.token_ids.eos
        cache, decode = prefill.cache, self.stages["decode"]
        span = self.decode_span(cache.length + max_new_tokens)  # one shape for the whole answer
        token = prefill.logits.argmax(-1, keepdim=True)  # [1, 1]
        position = prefill.next_position.clone()  # [1]
        slot = torch.full((), cache.length, dtype=torch.long, device=self.device)  # made there: no host copy
        tokens: list[int] = []
        for _ in range(max_new_tokens):
            tokens.append(int(token))
            if on_token is not None:
                on_token(len(tokens) - 1, tokens[-1], tokens)
            if tokens[-1] == eos or len(tokens) == max_new_tokens:
                break
            logits = decode_step(decode, cache, token, position, slot, span)
            cache.length += 1
            slot += 1
            position += 1
            token = logits.argmax(-1, keepdim=True)
        return tokens


@contextmanager
def _timed(timings: Timings, stage: str, origin: float):
    start = time.perf_counter()
    try:
        yield
    finally:
        end = time.perf_counter()
        timings.stages[stage] = timings.stages.get(stage, 0.0) + end - start
        timings.spans[stage] = (start - origin, end - origin)
