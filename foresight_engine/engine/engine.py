"""`Engine`: one reasoning step, images + conversation in, text answer + predicted video out.

Every stage is a separate method with static shapes (`vision`, `prefill`, `adapt`, `denoise`, `decode_video`,
`decode_text`), so builders can swap in compiled/exported components one by one. The runtime around them:
- after the prefill, the video branch (adapter -> denoise -> VAE) runs in a worker thread while the text branch
  decodes in the caller's thread (`overlap=True`); each sets its own CPU thread count (`ThreadSplit`);
- stage locks make a small pipeline across requests: the next request's vision + prefill runs while the previous
  request's video is denoised; `max_queue_size` bounds the requests in flight (`QueueFull` beyond);
- the denoising loop is the static plan (`models/static_denoiser.py`), the text decode uses a static KV cache
  (`models/static_kv.py`); `static=False` runs the eager reference loops instead;
- `cancel(id)` and `timeout_s` are checked at every denoising step and text token; `stream()` yields typed events.
Results equal the eager reference: same tokens, frames within fp32 tolerance.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator, Callable, Iterator, Sequence

import numpy as np
import torch
from diffusers.video_processor import VideoProcessor
from PIL import Image
from tqdm.auto import tqdm
from transformers import DynamicCache

from ..config import ModelConfig
from ..errors import ConfigError
from ..models.backbone import Backbone, PrefillOutput
from ..models.glp import GLPModel
from ..models.static_denoiser import GraphedDenoiseLoop, StaticDenoiser
from ..models.static_kv import StaticDecoder
from ..models.video_decoder import LatentGrid, VideoDecoder
from ..verify import verify
from ..verify.clips import load_clip
from .events import DenoiseStep, Done, Event, FramesReady, TextToken
from .prediction import Prediction, Timings
from .request import (ImageInput, Settings, build_messages, check_prompt_length, load_images, resolve_settings)
from .request_state import BranchAborted, RequestRegistry, RequestState
from .threads import ThreadSplit, use_threads

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger(__name__)

RUNTIME_OPTIONS = ("progress", "max_queue_size", "overlap", "static", "step_cache", "threads", "cuda_graphs")


@dataclass
class PreparedRequest:
    """A validated request, tokenised and pre-processed; no model has run yet."""

    settings: Settings
    images: list[Image.Image]
    input_ids: torch.Tensor  # [1, S]
    pixel_values: torch.Tensor  # [N_patches, C*T*P*P]
    image_grid_thw: torch.Tensor  # [n_images, 3]
    mm_token_type_ids: torch.Tensor  # [1, S]
    actual: np.ndarray | None = None  # uint8 [F, H, W, 3]: what really happened, to verify the prediction against


@dataclass
class ReusedPrefix:
    """A KV cache holding the first `length` tokens of a request (a session's earlier steps)."""

    cache: DynamicCache
    length: int
    first_image: int  # images before this one are already in the cache


class Engine:
    def __init__(self, model: GLPModel, *, progress: bool = False, max_queue_size: int = 8, overlap: bool = True,
                 static: bool = True, step_cache: float | None = None, threads: ThreadSplit | None = None,
                 cuda_graphs: bool = False):
        """`overlap`: text and video branches at the same time. `static`: static denoising loop and static KV
        decode (False: the eager reference loops). `step_cache`: first-block-cache threshold (None: off).
        `cuda_graphs`: replay the static loop as a CUDA graph (needs CUDA)."""
        if step_cache is not None and not (isinstance(step_cache, (int, float)) and step_cache > 0):
            raise ConfigError(f"step_cache={step_cache!r} must be a threshold > 0 (or None to disable)")
        if cuda_graphs and step_cache is not None:
            raise ConfigError("step_cache reads a value back every step, which a CUDA graph cannot; use one")
        self.model = model
        self.config: ModelConfig = model.config
        self.progress = progress
        self.overlap = overlap
        self.static = static
        self.step_cache = step_cache
        self.threads = threads or ThreadSplit()
        self._frame_processor = VideoProcessor(vae_scale_factor=self.config.vae.spatial_compression)
        self._registry = RequestRegistry(max_queue_size)
        self._front_lock = threading.Lock()  # vision + prefill: one request at a time
        self._video_lock = threading.Lock()  # adapter -> denoise -> VAE: one request at a time
        self._video_pool = ThreadPoolExecutor(max_workers=max_queue_size, thread_name_prefix="fe-video")
        if cuda_graphs and type(model.video_decoder) is not VideoDecoder:
            raise ConfigError("cuda_graphs=True captures the eager denoising loop; this engine's video decoder is "
                              f"{type(model.video_decoder).__name__} (a built artifact): use the artifact's backend")
        self._graphed = GraphedDenoiseLoop(StaticDenoiser(model.video_decoder)) if cuda_graphs else None

    @classmethod
    def from_preset(cls, name: str, seed: int = 0, **kwargs) -> "Engine":
        """Seeded random weights of preset `name` (`tiny`, `small`); `full` needs real weights."""
        return cls(GLPModel.from_preset(name, seed), **kwargs)

    @classmethod
    def load(cls, directory: str | Path, *, device: str = "cpu", **kwargs) -> "Engine":
        """An engine over a built artifact (`foresight-engine build`); its manifest, versions and file hashes are
        verified before anything is deserialized (`ArtifactError("rebuild needed: ...")` otherwise)."""
        from .artifact_loader import load_model
        return cls(load_model(directory, device)[0], **kwargs)

    @classmethod
    def from_pretrained(cls, vlm: str | Path, decoder: str | Path, glue: str | Path, *, lora: str | Path | None = None,
                        **kwargs) -> "Engine":
        runtime = {k: kwargs.pop(k) for k in RUNTIME_OPTIONS if k in kwargs}
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
        try:
            return self._execute(state, request, past)
        finally:
            self._registry.release(state)

    def _execute(self, state: RequestState, request: PreparedRequest,
                 past: ReusedPrefix | None) -> tuple[Prediction, PrefillOutput]:
        timings = Timings()
        with torch.inference_mode(), state.holding(self._front_lock), use_threads(self.threads.front):
            state.check()
            with _timed(timings, "vision", state.started):
                image_embeds = self.vision(request, past.first_image if past else 0)
            state.check()
            with _timed(timings, "prefill", state.started):
                prefill = self.prefill(request, image_embeds, past)
        if self.overlap:
            video = self._video_pool.submit(self._video_branch, state, request, prefill.world_latent, timings)
            try:
                token_ids = self._text_branch(state, request, prefill, timings)
            except BranchAborted:
                video.result()  # raises the video branch's error
                raise
            except BaseException:
                state.abort()
                wait_futures([video])
                raise
            frames, video_latent = video.result()
        else:
            frames, video_latent = self._video_branch(state, request, prefill.world_latent, timings)
            token_ids = self._text_branch(state, request, prefill, timings)
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

    def _video_branch(self, state: RequestState, request: PreparedRequest, world_latent: torch.Tensor,
                      timings: Timings) -> tuple[np.ndarray, torch.Tensor]:
        try:
            threads = self.threads.video if self.overlap else self.threads.front
            with torch.inference_mode(), state.holding(self._video_lock), use_threads(threads):
                state.check()
                with _timed(timings, "adapter", state.started):
                    conditioning, conditioning_mask = self.adapt(world_latent)
                generator = torch.Generator("cpu").manual_seed(request.settings.seed)

                def on_step(step: int, total: int) -> None:
                    state.emit(DenoiseStep(state.request_id, step, total))
                    state.check()

                with _timed(timings, "denoise", state.started):
                    latents, grid = self.denoise(request, conditioning, conditioning_mask, generator, on_step)
                state.check()  # a cancelled request skips its VAE decode
                with _timed(timings, "vae", state.started):
                    frames = self.decode_video(latents, grid, generator)
            state.emit(FramesReady(state.request_id, frames))
            return frames, grid.unpack(latents)[0]
        except BaseException:
            state.abort()
            raise

    def _text_branch(self, state: RequestState, request: PreparedRequest, prefill: PrefillOutput,
                     timings: Timings) -> list[int]:
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
        with torch.inference_mode(), use_threads(threads), _timed(timings, "text", state.started):
            return self.decode_text(prefill, request.settings.max_new_tokens, on_token)

    # ------------------------------------------------------------------------------------------- stages
    def prepare(self, images, prompt=None, *, messages=None, actual=None, **settings) -> PreparedRequest:
        """Validate everything and run the (cheap) processor; raises before any model runs."""
        s = resolve_settings(self.config, **settings)
        grid = self.latent_grid(s)  # built (fixed-shape) components refuse other shapes here, before any model runs
        self.model.video_decoder.check_request(grid, self.rope_scale(s), 2 if s.guidance_scale > 1 else 1)
        self.model.vae.check_request((1, grid.channels, grid.frames, grid.height, grid.width))
        actual_frames = None if actual is None else load_clip(actual, "actual")
        pil = load_images(images, self.config.processor.max_images)
        chat = build_messages(prompt, messages, len(pil))
        processor = self.model.processor
        text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        enc = processor(text=[text], images=pil, return_tensors="pt")
        check_prompt_length(enc["input_ids"].shape[1], self.config.processor.max_prompt_tokens,
                            self.config.adapter.num_query_tokens, s.max_new_tokens,
                            self.config.text.max_position_embeddings)
        return PreparedRequest(settings=s, images=pil, input_ids=enc["input_ids"], pixel_values=enc["pixel_values"],
                               image_grid_thw=enc["image_grid_thw"], mm_token_type_ids=enc["mm_token_type_ids"],
                               actual=actual_frames)

    def vision(self, request: PreparedRequest, first_image: int = 0) -> torch.Tensor | None:
        """Visual tokens of images[first_image:]: [N_visual, D_vlm] (None when there are none)."""
        grids = request.image_grid_thw[first_image:]
        if grids.shape[0] == 0:
            return None
        start = int(request.image_grid_thw[:first_image].prod(-1).sum())  # patches of the skipped images
        return self.model.vision_tower(request.pixel_values[start:], grids)

    def prefill(self, request: PreparedRequest, image_embeds: torch.Tensor | None,
                past: ReusedPrefix | None = None) -> PrefillOutput:
        """Prefill the prompt; with `past`, only the tokens after `past.length` run, on top of its cache."""
        position_ids, _ = self.model.qwen.model.get_rope_index(
            request.input_ids, mm_token_type_ids=request.mm_token_type_ids, image_grid_thw=request.image_grid_thw)
        start = past.length if past else 0
        embeds = self.model.backbone.embed(request.input_ids[:, start:], image_embeds)
        return self.model.backbone.prefill(embeds, position_ids[:, :, start:], past.cache if past else None)

    def adapt(self, world_latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.adapter(world_latent)

    def latent_grid(self, s: Settings) -> LatentGrid:
        vae, tr = self.config.vae, self.config.transformer
        return LatentGrid(frames=(s.num_frames - 1) // vae.temporal_compression + 1,
                          height=s.height // vae.spatial_compression, width=s.width // vae.spatial_compression,
                          channels=vae.latent_channels, patch=tr.patch_size, patch_t=tr.patch_size_t)

    def initial_latents(self, request: PreparedRequest, grid: LatentGrid,
                        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed noisy latents [1, S, C] with the current image's latents on the first frame, and that frame's
        token mask [1, S]. RNG order (VAE posterior sample, then noise) follows diffusers' image-to-video pipeline."""
        s = request.settings
        image = self._frame_processor.preprocess(request.images[-1], height=s.height, width=s.width)  # [1,3,H,W]
        image_latents = self.model.vae.encode_image(image, generator)  # [1, C, 1, h, w]
        shape = (1, grid.channels, grid.frames, grid.height, grid.width)
        mask = torch.zeros((1, 1, grid.frames, grid.height, grid.width))
        mask[:, :, 0] = 1.0
        noise = torch.randn(shape, generator=generator)
        latents = image_latents.repeat(1, 1, grid.frames, 1, 1) * mask + noise * (1 - mask)
        return grid.pack(latents), grid.pack(mask).squeeze(-1)

    def rope_scale(self, s: Settings) -> tuple[float, float, float]:
        vae = self.config.vae
        return (vae.temporal_compression / s.frame_rate, vae.spatial_compression, vae.spatial_compression)

    def denoise(self, request: PreparedRequest, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
                generator: torch.Generator, on_step: Callable[[int, int], None] | None = None
                ) -> tuple[torch.Tensor, LatentGrid]:
        """Packed latents [1, S, C] after every denoising step. The static loop runs when the decoder is the
        eager `VideoDecoder`; any other (artifact-backed) decoder runs its own `denoise`."""
        s = request.settings
        grid = self.latent_grid(s)
        latents, first_frame = self.initial_latents(request, grid, generator)
        decoder = self.model.video_decoder
        schedule = decoder.schedule(s.num_inference_steps, grid.num_tokens)
        with tqdm(total=s.num_inference_steps, desc="denoise", disable=not self.progress, leave=False) as bar:
            def step(i: int, n: int) -> None:
                bar.update(1)
                if on_step is not None:
                    on_step(i, n)
            if self.static and type(decoder) is VideoDecoder:  # artifact-backed subclasses run their own step
                denoiser = StaticDenoiser(decoder)
                plan = denoiser.plan(latents, conditioning, conditioning_mask, schedule, grid, self.rope_scale(s),
                                     s.guidance_scale)
                if self._graphed is not None:  # no host sync inside the graph: progress is reported after it
                    latents = self._graphed.run(plan)
                    for i in range(plan.num_steps):
                        step(i + 1, plan.num_steps)
                else:
                    latents = denoiser.run(plan, step, self.step_cache)
            else:
                latents = decoder.denoise(latents, first_frame, conditioning, conditioning_mask, schedule, grid,
                                          self.rope_scale(s), s.guidance_scale, on_step=step)
        return latents, grid

    def decode_video(self, latents: torch.Tensor, grid: LatentGrid, generator: torch.Generator) -> np.ndarray:
        """Packed latents -> uint8 frames [F, H, W, 3]."""
        video = self.model.vae.decode(grid.unpack(latents), generator, self.config.generation.decode_timestep)
        video = (video[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0)  # [F, H, W, 3]
        return (video * 255).round().to(torch.uint8).numpy()

    def decode_text(self, prefill: PrefillOutput, max_new_tokens: int,
                    on_token: Callable[[int, int, list[int]], None] | None = None) -> list[int]:
        """Greedy decoding from the prompt's KV cache; stops after the end-of-turn token. `on_token(index, id,
        tokens so far)` runs after each token (it may raise to stop). The keys/values of the fed tokens are
        appended to the prefill's cache (`prefill.static_cache` on the static path), for sessions."""
        eos = self.model.token_ids.eos
        backbone = self.model.backbone
        static = self.static and type(backbone) is Backbone  # artifact-backed backbones decode with their stage
        if static and max_new_tokens > 1:
            decoder = StaticDecoder(backbone.language_model, backbone.lm_head)
            prefill.static_cache = decoder.new_cache(prefill.cache.get_seq_length() + max_new_tokens)
            prefill.static_cache.load(prefill.cache)
        tokens: list[int] = []
        logits, position = prefill.logits, prefill.next_position
        for _ in range(max_new_tokens):
            token = int(logits[0].argmax())
            tokens.append(token)
            if on_token is not None:
                on_token(len(tokens) - 1, token, tokens)
            if token == eos or len(tokens) == max_new_tokens:
                break
            if static:
                cache = prefill.static_cache
                logits = decoder(torch.tensor([[token]]), position, torch.tensor(cache.length), cache)
                cache.length += 1
            else:
                logits = backbone.decode_step(torch.tensor([[token]]), position, prefill.cache)
            position = position + 1
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
