"""The LTX-Video decoder family's registry entry (`families.py`): `video_decoder.py`, `vae.py` and
`static_velocity.py` are its components; this file builds, loads and saves them, gives a request's geometry, its
two video stages and diffusers' `LTXImageToVideoPipeline` as the reference."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXImageToVideoPipeline
from diffusers import LTXVideoTransformer3DModel
from PIL import Image

from ..config import LTXDecoderConfig, ModelConfig, SchedulerConfig, TransformerConfig, VAEConfig
from .export_spec import BuildShape, ExportSpec, fixed_profile, vae_decode_spec
from .families import PublishedFigure, load_folder, save_folder
from .stages import DenoiseStage
from .static_velocity import StaticStep
from .vae import VideoVAE, vae_kwargs
from .video_decoder import VideoDecoder, scheduler_kwargs, transformer_kwargs
from .video_geometry import LatentGrid, VideoGeometry


class LTXFamily:
    name = "ltx"
    transformer_class = "LTXVideoTransformer3DModel"
    full_preset = "full"
    published = PublishedFigure("h100", "bf16", 2.0, "LTX-Video paper (arXiv 2501.00103): 121 frames at 768x512, "
                                "~2 s end to end on one H100")

    def build(self, config: ModelConfig) -> tuple[VideoDecoder, VideoVAE]:
        d = config.decoder
        return (VideoDecoder(LTXVideoTransformer3DModel(**transformer_kwargs(d.transformer)), d.scheduler),
                VideoVAE(AutoencoderKLLTXVideo(**vae_kwargs(d.vae))))

    def load(self, folder: Path, lora: Path | None, lora_scale: float
             ) -> tuple[LTXDecoderConfig, VideoDecoder, VideoVAE]:
        transformer, vae, sched = load_folder(folder, LTXVideoTransformer3DModel, AutoencoderKLLTXVideo, "LTX-Video",
                                              lora, lora_scale)
        t, v = transformer.config, vae.config
        defaults = SchedulerConfig()
        config = LTXDecoderConfig(
            transformer=TransformerConfig(in_channels=t.in_channels, num_attention_heads=t.num_attention_heads,
                                          attention_head_dim=t.attention_head_dim, num_layers=t.num_layers,
                                          caption_channels=t.caption_channels, patch_size=t.patch_size,
                                          patch_size_t=t.patch_size_t),
            vae=VAEConfig(latent_channels=v.latent_channels, block_out_channels=tuple(v.block_out_channels),
                          layers_per_block=tuple(v.layers_per_block),
                          spatio_temporal_scaling=tuple(v.spatio_temporal_scaling),
                          decoder_block_out_channels=tuple(v.decoder_block_out_channels),
                          decoder_layers_per_block=tuple(v.decoder_layers_per_block),
                          decoder_spatio_temporal_scaling=tuple(v.decoder_spatio_temporal_scaling),
                          decoder_inject_noise=tuple(v.decoder_inject_noise), patch_size=v.patch_size,
                          patch_size_t=v.patch_size_t),
            scheduler=SchedulerConfig(**{k: sched.get(k, getattr(defaults, k)) for k in asdict(defaults)}))
        return config, VideoDecoder(transformer, config.scheduler), VideoVAE(vae)

    def save(self, video_decoder: VideoDecoder, vae: VideoVAE, config: ModelConfig, folder: Path) -> None:
        save_folder(video_decoder.transformer, vae.vae,
                    FlowMatchEulerDiscreteScheduler(**scheduler_kwargs(config.decoder.scheduler)), folder)

    def geometry(self, config: ModelConfig, height: int, width: int, num_frames: int,
                 frame_rate: int) -> VideoGeometry:
        vae, grid = config.decoder.vae, LatentGrid.of(config.decoder, height, width, num_frames)
        rope_scale = (vae.temporal_compression / frame_rate, float(vae.spatial_compression),
                      float(vae.spatial_compression))
        return VideoGeometry(height, width, num_frames, frame_rate, grid, rope_scale,
                             pinned=grid.tokens_per_frame)  # the conditioned first frame

    def export_specs(self, config: ModelConfig) -> list[ExportSpec]:
        tokens, channels = config.adapter.num_tokens, config.decoder.conditioning_channels
        names = ("latents", "conditioning", "conditioning_mask", "timestep")

        def denoise_inputs(s: BuildShape, g: torch.Generator):
            geometry = s.geometry(config)
            grid = geometry.grid
            b, n = s.batch, grid.num_tokens
            timestep = torch.full((b, n), 500.0)
            timestep[:, : geometry.pinned] = 0.0  # the conditioned first frame
            return (torch.randn(b, n, grid.token_channels, generator=g),
                    torch.randn(b, tokens, channels, generator=g), torch.ones(b, tokens, dtype=torch.long), timestep)

        denoise = ExportSpec("denoise", "video_decoder", names, ("velocity",), {},
                             lambda m, s: DenoiseStage(m.video_decoder, s.geometry(config)), denoise_inputs,
                             fixed_profile(denoise_inputs, names))
        return [denoise, vae_decode_spec(config)]

    def static_step_spec(self, config: ModelConfig, ops: frozenset[str]) -> ExportSpec:
        """`denoise` as `StaticStep`: latents, step, step_sizes, guidance, then the plan's tables
        (`DenoisePlan.tensors()` order); the number of steps N is a dynamic axis (the tables have N + 1 rows: the last
        is the pinned frame's)."""
        tr = config.decoder.transformer
        blocks = tr.num_layers
        d, heads, length = tr.inner_dim, tr.num_attention_heads, config.adapter.num_tokens
        tables = tuple(f"block_ada.{j}" for j in range(blocks)) + ("out_ada",)
        kv = tuple(f"cross_{x}.{j}" for j in range(blocks) for x in "kv")
        names = ("latents", "step", "step_sizes", "guidance", "token_is_pinned", *tables[:-1], "out_ada", "rope_cos",
                 "rope_sin", "cross_bias", *kv)
        rope_width = d // 2 if "rmsnorm_rope" in ops else d  # the fused op reads one angle per pair

        def inputs(s: BuildShape, g: torch.Generator, steps: int | None = None):
            geometry = s.geometry(config)
            n, tokens, b = steps or config.generation.num_inference_steps, geometry.grid.num_tokens, s.batch
            angles = torch.rand(b, tokens, rope_width, generator=g) * 6.28
            return (torch.randn(1, tokens, geometry.grid.token_channels, generator=g), torch.tensor(1),
                    -torch.rand(n, generator=g) / n, torch.tensor(3.0 if s.guidance else 1.0),
                    (torch.arange(tokens) < geometry.pinned).view(1, tokens, 1, 1),
                    *(0.1 * torch.randn(n + 1, 6, d, generator=g) for _ in range(blocks)),
                    0.1 * torch.randn(n + 1, 2, d, generator=g), angles.cos(), angles.sin(),
                    torch.zeros(b, 1, 1, length),
                    *(torch.randn(b, heads, length, d // heads, generator=g) for _ in kv))

        def profiler(s: BuildShape):
            least, most = (tuple(tuple(x.shape) for x in inputs(s, torch.Generator(), n))
                           for n in (1, config.generation.limits.max_inference_steps))
            opt = tuple(tuple(x.shape) for x in inputs(s, torch.Generator()))
            return {name: (a, o, m) for name, a, o, m in zip(names, least, opt, most)}

        dynamic = {"step_sizes": {0: "steps"}} | {name: {0: "steps+1"} for name in tables}
        return ExportSpec("denoise", "video_decoder", names, ("latents",), dynamic,
                          lambda m, s: StaticStep(m.video_decoder.transformer, s.batch, s.geometry(config).pinned,
                                                  ops),
                          inputs, profiler, cache_inputs=(*tables, "cross_bias", *kv))

    def reference_pipeline(self, model, transformer: torch.nn.Module | None = None):
        """diffusers' image-to-video pipeline on the model's own transformer and VAE (no T5: the adapter's output
        is the prompt embeddings; zero embeddings with the same mask are the negative ones)."""
        pipe = LTXImageToVideoPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(**scheduler_kwargs(model.config.decoder.scheduler)),
            vae=model.vae.vae, text_encoder=None, tokenizer=None,
            transformer=model.video_decoder.transformer if transformer is None else transformer)
        pipe.set_progress_bar_config(disable=True)

        def run(image: Image.Image, conditioning: torch.Tensor, conditioning_mask: torch.Tensor, *, height: int,
                width: int, num_frames: int, num_inference_steps: int, guidance_scale: float, frame_rate: int,
                generator: torch.Generator) -> np.ndarray:
            negative = {}
            if guidance_scale > 1:
                negative = dict(negative_prompt_embeds=torch.zeros_like(conditioning),
                                negative_prompt_attention_mask=conditioning_mask)
            return pipe(image=image, prompt_embeds=conditioning, prompt_attention_mask=conditioning_mask,
                        generator=generator, output_type="np", frame_rate=frame_rate, height=height, width=width,
                        num_frames=num_frames, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, **negative).frames[0]
        return run


FAMILY = LTXFamily()

__all__ = ["FAMILY", "LTXFamily"]
