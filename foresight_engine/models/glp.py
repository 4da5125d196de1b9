"""The whole GLP stack: tokenizer/processor and its components, built at random or loaded from folders.

On-disk layout (what `save_pretrained` writes and `from_pretrained` reads):
- `vlm/`: a Hugging Face Qwen2.5-VL folder (config, safetensors, tokenizer, processor);
- `decoder/`: a diffusers video decoder folder (`transformer/`, `vae/`, `scheduler/`) of any decoder family
  (`families.py`: LTX-Video, HunyuanVideo-1.5; told apart by the transformer's class);
- `glue.safetensors`: the learned parts, `query_tokens` [Q, D] and `adapter.*`, with the adapter config in the
  header. Optionally a LoRA of the decoder's transformer, fused at load (see `lora.py`);
- `spatial/` (the hybrid encoder only): a Hugging Face DINOv2 folder.
"""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

from ..config import AdapterConfig, GenerationConfig, ModelConfig, ProcessorConfig, preset
from ..errors import WeightsError
from .adapter import ConditioningAdapter
from .backbone import Backbone
from .families import family, family_of_folder
from .qwen_vl import SpecialTokenIds, build_qwen_vl, typed_configs
from .spatial_encoder import SpatialEncoder
from .tokenizer import build_processor, build_tokenizer
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
    Qwen2.5-VL model, and each component is compiled/exported on its own. `video_decoder` and `vae` are the
    config's decoder family's components (`families.py`); `spatial_encoder` is DINOv2 with the hybrid encoder on."""

    def __init__(self, config: ModelConfig, processor, qwen: Qwen2_5_VLForConditionalGeneration,
                 adapter: ConditioningAdapter, video_decoder: torch.nn.Module, vae: torch.nn.Module,
                 query_tokens: torch.Tensor | None = None, spatial_encoder: SpatialEncoder | None = None):
        if (spatial_encoder is None) != (config.spatial_encoder is None):
            raise WeightsError(f"config {config.name!r} has spatial_encoder={config.spatial_encoder}, but the model "
                               f"{'lacks' if spatial_encoder is None else 'has'} a spatial encoder")
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
        self.video_decoder = video_decoder.eval()
        self.vae = vae.eval()
        self.spatial_encoder = None if spatial_encoder is None else spatial_encoder.eval()
        for module in self.components().values():
            module.requires_grad_(False)

    def components(self) -> dict[str, torch.nn.Module]:
        out = {"vision_tower": self.vision_tower, "backbone": self.backbone, "adapter": self.adapter,
               "video_decoder": self.video_decoder, "vae": self.vae}
        return out | ({"spatial_encoder": self.spatial_encoder} if self.spatial_encoder is not None else {})

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
        adapter = build_adapter(config)
        video_decoder, vae = family(config).build(config)
        spatial = None if config.spatial_encoder is None else SpatialEncoder.build(config.spatial_encoder)
        return cls(config, processor, qwen, adapter, video_decoder, vae, spatial_encoder=spatial)

    @classmethod
    def from_preset(cls, name: str, seed: int = 0) -> "GLPModel":
        return cls.random(preset(name), seed)

    # -------------------------------------------------------------------------------------------- on disk
    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        self.qwen.save_pretrained(directory / "vlm")
        self.processor.save_pretrained(directory / "vlm")
        family(self.config).save(self.video_decoder, self.vae, self.config, directory / "decoder")
        if self.spatial_encoder is not None:
            self.spatial_encoder.save_pretrained(directory / "spatial")
        glue = {"query_tokens": self.backbone.query_tokens}
        glue.update({f"adapter.{k}": v for k, v in self.adapter.state_dict().items()})
        save_safetensors(glue, directory / "glue.safetensors",
                         {"format": GLUE_FORMAT, "adapter_config": asdict(self.config.adapter)})
        return directory

    @classmethod
    def from_pretrained(cls, vlm: str | Path, decoder: str | Path, glue: str | Path, *, lora: str | Path | None = None,
                        lora_scale: float = 1.0, spatial: str | Path | None = None,
                        generation: GenerationConfig | None = None, name: str = "pretrained") -> "GLPModel":
        """Load real weights from local folders: the Qwen2.5-VL folder, a diffusers decoder folder of any family,
        the glue file, an optional LoRA of the decoder's transformer and, for the hybrid encoder, a DINOv2 folder
        (`spatial`). Raises `WeightsError` naming every tensor left unfilled."""
        vlm, decoder = Path(vlm), Path(decoder)
        for folder in (vlm, decoder / "transformer", decoder / "vae"):
            if not (folder / "config.json").is_file():
                raise WeightsError(f"not a model folder (no config.json): {folder}")
        entry = family_of_folder(decoder)
        glue_tensors, glue_meta = read_safetensors(glue)
        if glue_meta.get("format") != GLUE_FORMAT or "adapter_config" not in glue_meta:
            raise WeightsError(f"{glue}: not a {GLUE_FORMAT} file (header format={glue_meta.get('format')!r})")
        adapter_config = AdapterConfig(**json.loads(glue_meta["adapter_config"]))
        hybrid = any(k.startswith("adapter.spatial_in.") for k in glue_tensors)
        if hybrid != (spatial is not None):
            raise WeightsError(f"{glue}: its adapter {'fuses' if hybrid else 'has no'} DINOv2 features (hybrid "
                               f"encoder) but spatial={spatial}: give the DINOv2 folder exactly with such a glue file")

        processor = AutoProcessor.from_pretrained(vlm)
        qwen, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(vlm, dtype=torch.float32,
                                                                        output_loading_info=True)
        check_loading_info(info, f"Qwen2.5-VL checkpoint {vlm}")
        decoder_config, video_decoder, vae = entry.load(decoder, None if lora is None else Path(lora), lora_scale)
        spatial_encoder = None if spatial is None else SpatialEncoder.from_pretrained(spatial)

        vision, text = typed_configs(qwen.config)
        size = processor.image_processor.size  # Qwen2-VL keeps its pixel budget as shortest/longest edge
        config = ModelConfig(
            name=name, vision=vision, text=text,
            processor=ProcessorConfig(min_pixels=size.shortest_edge, max_pixels=size.longest_edge),
            adapter=adapter_config, decoder=decoder_config,
            generation=generation or preset(entry.full_preset).generation,
            spatial_encoder=None if spatial_encoder is None else spatial_encoder.settings)
        adapter = build_adapter(config)
        if "query_tokens" not in glue_tensors:
            raise WeightsError(f"{glue}: missing 1 tensor(s): query_tokens")
        load_strict(adapter, {k[len("adapter."):]: v for k, v in glue_tensors.items() if k.startswith("adapter.")},
                    f"adapter in {glue}")
        return cls(config, processor, qwen, adapter, video_decoder, vae, query_tokens=glue_tensors["query_tokens"],
                   spatial_encoder=spatial_encoder)


def build_adapter(config: ModelConfig) -> ConditioningAdapter:
    """The adapter the config describes: world latent (+ DINOv2 features) -> the decoder's conditioning."""
    spatial = config.spatial_encoder
    return ConditioningAdapter(config.adapter, config.text.hidden_size, config.decoder.conditioning_channels,
                               None if spatial is None else spatial.hidden_size)
