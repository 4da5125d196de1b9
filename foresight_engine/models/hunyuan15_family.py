"""The HunyuanVideo-1.5 decoder family's registry entry (`families.py`): `hunyuan15_decoder.py`,
`hunyuan15_static.py` and `hunyuan15_vae.py` are its components; this file builds, loads and saves them, gives a
request's geometry, its two video stages and diffusers' `HunyuanVideo15ImageToVideoPipeline` as the reference."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import (AutoencoderKLHunyuanVideo15, FlowMatchEulerDiscreteScheduler,
                       HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Transformer3DModel)
from diffusers.guiders import ClassifierFreeGuidance
from PIL import Image
from torch import nn
from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

from ..config import (Hunyuan15DecoderConfig, Hunyuan15SchedulerConfig, Hunyuan15TransformerConfig,
                      Hunyuan15VAEConfig, ModelConfig)
from ..errors import ConfigError, WeightsError
from .export_spec import BuildShape, ExportSpec, fixed_profile, vae_decode_spec
from .families import PublishedFigure, load_folder, save_folder
from .hunyuan15_decoder import GLYPH_TOKENS, Hunyuan15Decoder, scheduler_kwargs, transformer_kwargs
from .hunyuan15_vae import Hunyuan15VAE, vae_kwargs
from .video_geometry import LatentGrid, VideoGeometry


class Hunyuan15DenoiseStage(nn.Module):
    """ONE fixed-shape denoising step at a fixed geometry: latents [B, S, C], conditioning [B, L, C_cond],
    conditioning_mask [B, L], timestep [B], image_condition [B, S, C + 1] -> velocity [B, S, C] (fp32)."""

    def __init__(self, decoder: Hunyuan15Decoder, geometry: VideoGeometry):
        super().__init__()
        self.decoder = decoder
        self.geometry = geometry

    def forward(self, latents: torch.Tensor, conditioning: torch.Tensor, conditioning_mask: torch.Tensor,
                timestep: torch.Tensor, image_condition: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents, conditioning, conditioning_mask, timestep, image_condition, self.geometry)


class Hunyuan15Family:
    name = "hunyuan15"
    transformer_class = "HunyuanVideo15Transformer3DModel"
    full_preset = "full-hunyuan15"
    # the step-distilled 480p image-to-video model's end-to-end time, as the Foresight system quotes it
    published = PublishedFigure("rtx4090", "bf16", 75.0, "Foresight system datasheet: original HunyuanVideo-1.5 "
                                "480p image-to-video pipeline, step-distilled, 121 frames, one RTX 4090")

    def build(self, config: ModelConfig) -> tuple[Hunyuan15Decoder, Hunyuan15VAE]:
        d = config.decoder
        transformer = HunyuanVideo15Transformer3DModel(**transformer_kwargs(d.transformer, d.vae.latent_channels))
        return (Hunyuan15Decoder(transformer, d.scheduler),
                Hunyuan15VAE(AutoencoderKLHunyuanVideo15(**vae_kwargs(d.vae))))

    def load(self, folder: Path, lora: Path | None, lora_scale: float
             ) -> tuple[Hunyuan15DecoderConfig, Hunyuan15Decoder, Hunyuan15VAE]:
        transformer, vae, sched = load_folder(folder, HunyuanVideo15Transformer3DModel, AutoencoderKLHunyuanVideo15,
                                              "HunyuanVideo-1.5", lora, lora_scale)
        t, v = transformer.config, vae.config
        if t.in_channels != 2 * v.latent_channels + 1 or t.out_channels != v.latent_channels or t.use_meanflow:
            raise WeightsError(f"{folder / 'transformer'}: in_channels={t.in_channels}, out_channels="
                               f"{t.out_channels}, use_meanflow={t.use_meanflow}; an image-to-video transformer "
                               f"over {v.latent_channels} latent channels has {2 * v.latent_channels + 1}, "
                               f"{v.latent_channels}, False")
        if sched.get("use_dynamic_shifting"):
            raise WeightsError(f"{folder / 'scheduler'}: use_dynamic_shifting=True; HunyuanVideo-1.5 uses a fixed "
                               "shift")
        defaults = Hunyuan15SchedulerConfig()
        config = Hunyuan15DecoderConfig(
            transformer=Hunyuan15TransformerConfig(
                num_attention_heads=t.num_attention_heads, attention_head_dim=t.attention_head_dim,
                num_layers=t.num_layers, text_embed_dim=t.text_embed_dim, rope_axes_dim=tuple(t.rope_axes_dim),
                num_refiner_layers=t.num_refiner_layers, mlp_ratio=t.mlp_ratio, patch_size=t.patch_size,
                patch_size_t=t.patch_size_t, text_embed_2_dim=t.text_embed_2_dim, image_embed_dim=t.image_embed_dim,
                rope_theta=t.rope_theta, target_size=t.target_size),
            vae=Hunyuan15VAEConfig(latent_channels=v.latent_channels, block_out_channels=tuple(v.block_out_channels),
                                   layers_per_block=v.layers_per_block,
                                   spatial_compression=v.spatial_compression_ratio,
                                   temporal_compression=v.temporal_compression_ratio,
                                   scaling_factor=v.scaling_factor),
            scheduler=Hunyuan15SchedulerConfig(shift=float(sched.get("shift", defaults.shift)),
                                               num_train_timesteps=sched.get("num_train_timesteps",
                                                                             defaults.num_train_timesteps)))
        return config, Hunyuan15Decoder(transformer, config.scheduler), Hunyuan15VAE(vae)

    def save(self, video_decoder: Hunyuan15Decoder, vae: Hunyuan15VAE, config: ModelConfig, folder: Path) -> None:
        save_folder(video_decoder.transformer, vae.vae,
                    FlowMatchEulerDiscreteScheduler(**scheduler_kwargs(config.decoder.scheduler)), folder)

    def geometry(self, config: ModelConfig, height: int, width: int, num_frames: int,
                 frame_rate: int) -> VideoGeometry:
        grid = LatentGrid.of(config.decoder, height, width, num_frames)
        # its RoPE counts latent positions (no scale); every frame is denoised (none pinned)
        return VideoGeometry(height, width, num_frames, frame_rate, grid, (1.0, 1.0, 1.0), pinned=0)

    # no static whole-step form: a compile build's `denoise` is the plain forward (`export_specs`)
    static_step_spec = None

    def export_specs(self, config: ModelConfig) -> list[ExportSpec]:
        tokens, channels = config.adapter.num_tokens, config.decoder.conditioning_channels
        names = ("latents", "conditioning", "conditioning_mask", "timestep", "image_condition")

        def denoise_inputs(s: BuildShape, g: torch.Generator):
            grid = s.geometry(config).grid
            b, n, volume = s.batch, grid.num_tokens, grid.token_channels // grid.channels
            return (torch.randn(b, n, grid.token_channels, generator=g),
                    torch.randn(b, tokens, channels, generator=g), torch.ones(b, tokens, dtype=torch.long),
                    torch.full((b,), 500.0), torch.randn(b, n, (grid.channels + 1) * volume, generator=g))

        denoise = ExportSpec("denoise", "video_decoder", names, ("velocity",), {},
                             lambda m, s: Hunyuan15DenoiseStage(m.video_decoder, s.geometry(config)), denoise_inputs,
                             fixed_profile(denoise_inputs, names))
        return [denoise, vae_decode_spec(config)]

    def reference_pipeline(self, model, transformer: torch.nn.Module | None = None):
        """diffusers' image-to-video pipeline on the model's own transformer and VAE, fed what this engine feeds
        (`hunyuan15_decoder.py`): the adapter's output as the Qwen2.5-VL prompt embeddings, one masked ByT5
        token, and a SigLIP whose output is exactly zero (its final norm's weight and bias zeroed: the pipeline
        always runs an image encoder). The image is cropped to the request's size first; the pipeline picks its
        own size from the image (resolution buckets), which must then be that size."""
        d = model.config.decoder
        transformer = model.video_decoder.transformer if transformer is None else transformer
        siglip = SiglipVisionModel(SiglipVisionConfig(hidden_size=d.transformer.image_embed_dim, intermediate_size=8,
                                                      num_hidden_layers=1, num_attention_heads=1, image_size=14,
                                                      patch_size=14, vision_use_head=False)).eval()
        with torch.no_grad():
            siglip.post_layernorm.weight.zero_()
            siglip.post_layernorm.bias.zero_()
        # the pipeline tests its transformer's truthiness, which a torch.compile wrapper refuses (no len()): it is
        # built on the module itself and handed the wrapper after
        pipe = HunyuanVideo15ImageToVideoPipeline(
            text_encoder=None, tokenizer=None, transformer=getattr(transformer, "_orig_mod", transformer),
            vae=model.vae.vae,
            scheduler=FlowMatchEulerDiscreteScheduler(**scheduler_kwargs(d.scheduler)), text_encoder_2=None,
            tokenizer_2=None, guider=ClassifierFreeGuidance(), image_encoder=siglip.to(model.video_decoder.dtype),
            feature_extractor=SiglipImageProcessor(size={"height": 14, "width": 14}))
        pipe.transformer = transformer
        pipe.set_progress_bar_config(disable=True)
        processor = pipe.video_processor

        def run(image: Image.Image, conditioning: torch.Tensor, conditioning_mask: torch.Tensor, *, height: int,
                width: int, num_frames: int, num_inference_steps: int, guidance_scale: float, frame_rate: int,
                generator: torch.Generator) -> np.ndarray:
            bucket = processor.calculate_default_height_width(height, width, pipe.target_size)
            if tuple(bucket) != (height, width):
                raise ConfigError(f"HunyuanVideo-1.5's pipeline turns a {height}x{width} image into {bucket[0]}x"
                                  f"{bucket[1]} (target_size={pipe.target_size}): compare at a size it keeps")
            pipe.register_modules(guider=ClassifierFreeGuidance(guidance_scale=guidance_scale))
            glyph = conditioning.new_zeros(1, GLYPH_TOKENS, d.transformer.text_embed_2_dim)
            glyph_mask = conditioning_mask.new_zeros(1, GLYPH_TOKENS)
            text = dict(prompt_embeds=conditioning, prompt_embeds_mask=conditioning_mask, prompt_embeds_2=glyph,
                        prompt_embeds_mask_2=glyph_mask)
            if guidance_scale > 1:
                text.update(negative_prompt_embeds=torch.zeros_like(conditioning),
                            negative_prompt_embeds_mask=conditioning_mask, negative_prompt_embeds_2=glyph,
                            negative_prompt_embeds_mask_2=glyph_mask)
            image = processor.resize(image, height=height, width=width, resize_mode="crop")
            return pipe(image=image, num_frames=num_frames, num_inference_steps=num_inference_steps,
                        generator=generator, output_type="np", **text).frames[0]
        return run


FAMILY = Hunyuan15Family()

__all__ = ["FAMILY", "Hunyuan15DenoiseStage", "Hunyuan15Family"]
