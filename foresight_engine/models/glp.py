"""The whole GLP stack: tokenizer/processor and the five components, built at random or loaded from folders.

On-disk layout (what `save_pretrained` writes and `from_pretrained` reads):
- `vlm/`: a Hugging Face Qwen2.5-VL folder (config, safetensors, tokenizer, processor);
- `decoder/`: a diffusers LTX-Video folder (`transformer/`, `vae/`, `scheduler/`);
- `glue.safetensors`: the learned parts, `query_tokens` [Q, D] and `adapter.*`, with the adapter config in the
  header. Optionally a LoRA of the LTX transformer, fused at load (see `lora.py`).
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from ..config import (AdapterConfig, GenerationConfig, ModelConfig, ProcessorConfig, SchedulerConfig,
                      TransformerConfig, VAEConfig, preset)
from ..errors import WeightsError
from .adapter import ConditioningAdapter
from .backbone import Backbone
from .lora import fuse_lora
from .qwen_vl import SpecialTokenIds, build_qwen_vl, typed_configs
from .tokenizer import build_processor, build_tokenizer
from .vae import VideoVAE, vae_kwargs
from .video_decoder import VideoDecoder, scheduler_kwargs, transformer_kwargs
from .vision_tower import VisionTower
from .weights import check_loading_info, load_strict, read_safetensors, save_safetensors

log = logging.getLogger(__name__)

GLUE_FORMAT = "foresight-glue-v1"


@contextmanager
def _seeded(seed: int):
    """Deterministic random init without disturbing the caller's global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class GLPModel:
    """Holds the processor and the components. Not an `nn.Module`: the vision tower and backbone share one
    Qwen2.5-VL model, and each component is compiled/exported on its own."""

    def __init__(self, config: ModelConfig, processor, qwen: Qwen2_5_VLForConditionalGeneration,
                 adapter: ConditioningAdapter, transformer: LTXVideoTransformer3DModel, vae: AutoencoderKLLTXVideo,
                 query_tokens: torch.Tensor | None = None):
        self.config = config
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.token_ids = SpecialTokenIds.from_tokenizer(self.tokenizer)
        self.qwen = qwen.eval()
        self.vision_tower = VisionTower(qwen.model.visual).eval()
        self.backbone = Backbone(qwen.model.language_model, qwen.lm_head, config.adapter.num_query_tokens,
                                 self.token_ids.image).eval()
        if query_tokens is not None:
            load_strict(self.backbone, {**self.backbone.state_dict(), "query_tokens": query_tokens}, "query tokens")
        self.adapter = adapter.eval()
        self.video_decoder = VideoDecoder(transformer, config.scheduler).eval()
        self.vae = VideoVAE(vae).eval()
        for module in self.components().values():
            module.requires_grad_(False)

    def components(self) -> dict[str, torch.nn.Module]:
        return {"vision_tower": self.vision_tower, "backbone": self.backbone, "adapter": self.adapter,
                "video_decoder": self.video_decoder, "vae": self.vae}

    @property
    def device(self) -> torch.device:
        """Where the weights are (the query tokens stand for all of them: `to` moves every component at once)."""
        return self.backbone.query_tokens.device

    def to(self, device: torch.device | str) -> "GLPModel":
        """Move every component's weights to `device` (in place, like `nn.Module.to`), each tensor once (the vision
        tower and the backbone hold all of the Qwen2.5-VL model's); returns self."""
        for module in self.components().values():
            module.to(device)
        return self

    # ------------------------------------------------------------------------------------------- building
    @classmethod
    def random(cls, config: ModelConfig, seed: int = 0) -> "GLPModel":
        """Seeded random weights and a locally built tokenizer (presets `tiny`/`small`)."""
        if not config.processor.tokenizer_vocab_size:
            raise WeightsError(f"preset {config.name!r} has no local tokenizer: load it with from_pretrained()")
        processor = build_processor(config, build_tokenizer(config.processor.tokenizer_vocab_size))
        with _seeded(seed):
            model = cls.build(config, processor)
        log.info("built %s with seed %d", config.name, seed)
        return model

    @classmethod
    def build(cls, config: ModelConfig, processor) -> "GLPModel":
        """The stack built from `config` with freshly initialised weights (callers seed or load over them)."""
        qwen = build_qwen_vl(config, SpecialTokenIds.from_tokenizer(processor.tokenizer))
        adapter = ConditioningAdapter(config.adapter, config.text.hidden_size, config.transformer.caption_channels)
        transformer = LTXVideoTransformer3DModel(**transformer_kwargs(config.transformer))
        vae = AutoencoderKLLTXVideo(**vae_kwargs(config.vae))
        return cls(config, processor, qwen, adapter, transformer, vae)

    @classmethod
    def from_preset(cls, name: str, seed: int = 0) -> "GLPModel":
        return cls.random(preset(name), seed)

    # -------------------------------------------------------------------------------------------- on disk
    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        self.qwen.save_pretrained(directory / "vlm")
        self.processor.save_pretrained(directory / "vlm")
        decoder = directory / "decoder"
        self.video_decoder.transformer.save_pretrained(decoder / "transformer")
        self.vae.vae.save_pretrained(decoder / "vae")
        FlowMatchEulerDiscreteScheduler(**scheduler_kwargs(self.config.scheduler)).save_pretrained(decoder / "scheduler")
        glue = {"query_tokens": self.backbone.query_tokens}
        glue.update({f"adapter.{k}": v for k, v in self.adapter.state_dict().items()})
        save_safetensors(glue, directory / "glue.safetensors",
                         {"format": GLUE_FORMAT, "adapter_config": asdict(self.config.adapter)})
        return directory

    @classmethod
    def from_pretrained(cls, vlm: str | Path, decoder: str | Path, glue: str | Path, *, lora: str | Path | None = None,
                        lora_scale: float = 1.0, generation: GenerationConfig | None = None,
                        name: str = "pretrained") -> "GLPModel":
        """Load real weights from local folders; raises `WeightsError` naming every tensor left unfilled."""
        vlm, decoder = Path(vlm), Path(decoder)
        for folder in (vlm, decoder / "transformer", decoder / "vae"):
            if not (folder / "config.json").is_file():
                raise WeightsError(f"not a model folder (no config.json): {folder}")
        glue_tensors, glue_meta = read_safetensors(glue)
        if glue_meta.get("format") != GLUE_FORMAT or "adapter_config" not in glue_meta:
            raise WeightsError(f"{glue}: not a {GLUE_FORMAT} file (header format={glue_meta.get('format')!r})")
        adapter_config = AdapterConfig(**json.loads(glue_meta["adapter_config"]))

        processor = AutoProcessor.from_pretrained(vlm)
        qwen, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(vlm, dtype=torch.float32,
                                                                        output_loading_info=True)
        check_loading_info(info, f"Qwen2.5-VL checkpoint {vlm}")
        transformer, info = LTXVideoTransformer3DModel.from_pretrained(decoder, subfolder="transformer",
                                                                       torch_dtype=torch.float32,
                                                                       output_loading_info=True)
        check_loading_info(info, f"LTX-Video transformer {decoder / 'transformer'}")
        vae, info = AutoencoderKLLTXVideo.from_pretrained(decoder, subfolder="vae", torch_dtype=torch.float32,
                                                          output_loading_info=True)
        check_loading_info(info, f"LTX-Video VAE {decoder / 'vae'}")
        if lora is not None:
            fused = fuse_lora(transformer, lora, lora_scale)
            log.info("fused LoRA %s into %d modules", lora, len(fused))

        config = _config_from_loaded(name, qwen, processor, adapter_config, transformer, vae, decoder, generation)
        adapter = ConditioningAdapter(adapter_config, config.text.hidden_size, config.transformer.caption_channels)
        if "query_tokens" not in glue_tensors:
            raise WeightsError(f"{glue}: missing 1 tensor(s): query_tokens")
        load_strict(adapter, {k[len("adapter."):]: v for k, v in glue_tensors.items() if k.startswith("adapter.")},
                    f"adapter in {glue}")
        return cls(config, processor, qwen, adapter, transformer, vae, query_tokens=glue_tensors["query_tokens"])


def _config_from_loaded(name, qwen, processor, adapter: AdapterConfig, transformer, vae, decoder: Path,
                        generation: GenerationConfig | None) -> ModelConfig:
    vision, text = typed_configs(qwen.config)
    size = processor.image_processor.size  # Qwen2-VL keeps its pixel budget as shortest/longest edge
    t, v = transformer.config, vae.config
    scheduler_file = decoder / "scheduler" / "scheduler_config.json"
    sched = json.loads(scheduler_file.read_text()) if scheduler_file.is_file() else {}
    defaults = SchedulerConfig()
    return ModelConfig(
        name=name, vision=vision, text=text,
        processor=ProcessorConfig(min_pixels=size.shortest_edge, max_pixels=size.longest_edge),
        adapter=adapter,
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
        scheduler=SchedulerConfig(**{k: sched.get(k, getattr(defaults, k)) for k in asdict(defaults)}),
        generation=generation or preset("full").generation,
    )
