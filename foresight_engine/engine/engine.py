"""`Engine`: one reasoning step, images + conversation in, text answer + predicted video out.

This is the eager fp32 reference. Every stage is a separate call with static shapes, so builders can swap
in compiled/exported versions one by one and the runtime can overlap them.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from diffusers.video_processor import VideoProcessor
from PIL import Image
from tqdm.auto import tqdm

from ..config import ModelConfig
from ..models.backbone import PrefillOutput
from ..models.glp import GLPModel
from ..models.video_decoder import LatentGrid
from .prediction import Prediction, Timings
from .request import (ImageInput, Settings, build_messages, check_prompt_length, load_images, resolve_settings)

log = logging.getLogger(__name__)


@dataclass
class PreparedRequest:
    """A validated request, tokenised and pre-processed; no model has run yet."""

    settings: Settings
    images: list[Image.Image]
    input_ids: torch.Tensor  # [1, S]
    pixel_values: torch.Tensor  # [N_patches, C*T*P*P]
    image_grid_thw: torch.Tensor  # [n_images, 3]
    mm_token_type_ids: torch.Tensor  # [1, S]


class Engine:
    def __init__(self, model: GLPModel, *, progress: bool = False):
        self.model = model
        self.config: ModelConfig = model.config
        self.progress = progress
        self._frame_processor = VideoProcessor(vae_scale_factor=self.config.vae.spatial_compression)

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
        progress = kwargs.pop("progress", False)
        return cls(GLPModel.from_pretrained(vlm, decoder, glue, lora=lora, **kwargs), progress=progress)

    # ----------------------------------------------------------------------------------------------- API
    @torch.inference_mode()
    def predict(self, images: ImageInput | Sequence[ImageInput], prompt: str | None = None, *,
                messages: list[dict] | None = None, height: int | None = None, width: int | None = None,
                num_frames: int | None = None, num_inference_steps: int | None = None,
                guidance_scale: float | None = None, max_new_tokens: int | None = None, seed: int = 0,
                frame_rate: int | None = None, on_step: Callable[[int, int], None] | None = None) -> Prediction:
        """One reasoning step. `images`: one or more (the last one is the video's first frame); give `prompt`
        (one user turn) or `messages` (a chat). Unset settings take the preset's defaults."""
        start = time.perf_counter()
        request = self.prepare(images, prompt, messages=messages, height=height, width=width, num_frames=num_frames,
                               num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                               max_new_tokens=max_new_tokens, seed=seed, frame_rate=frame_rate)
        timings = Timings()
        with _timed(timings, "vision"):
            image_embeds = self.vision(request)
        with _timed(timings, "prefill"):
            prefill = self.prefill(request, image_embeds)
        with _timed(timings, "adapter"):
            conditioning, conditioning_mask = self.adapt(prefill.world_latent)
        with _timed(timings, "denoise"):
            generator = torch.Generator("cpu").manual_seed(request.settings.seed)
            latents, grid = self.denoise(request, conditioning, conditioning_mask, generator, on_step)
        with _timed(timings, "vae"):
            frames = self.decode_video(latents, grid, generator)
        with _timed(timings, "text"):
            token_ids = self.decode_text(prefill, request.settings.max_new_tokens)
        timings.total = time.perf_counter() - start
        text = self.model.tokenizer.decode(token_ids, skip_special_tokens=True)
        return Prediction(text=text, token_ids=token_ids, frames=frames, world_latent=prefill.world_latent[0],
                          video_latent=grid.unpack(latents)[0], timings=timings,
                          settings=request.settings.to_dict())

    # ------------------------------------------------------------------------------------------- stages
    def prepare(self, images, prompt=None, *, messages=None, **settings) -> PreparedRequest:
        """Validate everything and run the (cheap) processor; raises before any model runs."""
        s = resolve_settings(self.config, **settings)
        pil = load_images(images, self.config.processor.max_images)
        chat = build_messages(prompt, messages, len(pil))
        processor = self.model.processor
        text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        enc = processor(text=[text], images=pil, return_tensors="pt")
        check_prompt_length(enc["input_ids"].shape[1], self.config.processor.max_prompt_tokens,
                            self.config.adapter.num_query_tokens, s.max_new_tokens,
                            self.config.text.max_position_embeddings)
        return PreparedRequest(settings=s, images=pil, input_ids=enc["input_ids"], pixel_values=enc["pixel_values"],
                               image_grid_thw=enc["image_grid_thw"], mm_token_type_ids=enc["mm_token_type_ids"])

    def vision(self, request: PreparedRequest) -> torch.Tensor:
        """Visual tokens of all images: [N_visual, D_vlm]."""
        return self.model.vision_tower(request.pixel_values, request.image_grid_thw)

    def prefill(self, request: PreparedRequest, image_embeds: torch.Tensor) -> PrefillOutput:
        position_ids, _ = self.model.qwen.model.get_rope_index(
            request.input_ids, mm_token_type_ids=request.mm_token_type_ids, image_grid_thw=request.image_grid_thw)
        embeds = self.model.backbone.embed(request.input_ids, image_embeds)
        return self.model.backbone.prefill(embeds, position_ids)

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
            latents = decoder.denoise(latents, first_frame, conditioning, conditioning_mask, schedule, grid,
                                      self.rope_scale(s), s.guidance_scale, on_step=step)
        return latents, grid

    def decode_video(self, latents: torch.Tensor, grid: LatentGrid, generator: torch.Generator) -> np.ndarray:
        """Packed latents -> uint8 frames [F, H, W, 3]."""
        video = self.model.vae.decode(grid.unpack(latents), generator, self.config.generation.decode_timestep)
        video = (video[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 3, 0)  # [F, H, W, 3]
        return (video * 255).round().to(torch.uint8).numpy()

    def decode_text(self, prefill: PrefillOutput, max_new_tokens: int) -> list[int]:
        """Greedy decoding from the prompt's KV cache; stops after the end-of-turn token."""
        eos = self.model.token_ids.eos
        tokens: list[int] = []
        logits, position = prefill.logits, prefill.next_position
        for _ in range(max_new_tokens):
            token = int(logits[0].argmax())
            tokens.append(token)
            if token == eos or len(tokens) == max_new_tokens:
                break
            logits = self.model.backbone.decode_step(torch.tensor([[token]]), position, prefill.cache)
            position = position + 1
        return tokens


@contextmanager
def _timed(timings: Timings, stage: str):
    start = time.perf_counter()
    yield
    timings.stages[stage] = timings.stages.get(stage, 0.0) + time.perf_counter() - start
