"""The hybrid encoder's spatial branch: DINOv2 (transformers' `Dinov2Model`) patch features of the conditioning
image. The VLM's 2x2 token merger and its language model keep the image's semantics but lose where things are;
DINOv2's patch tokens keep the layout. The adapter fuses them with the world latent (`adapter.py`).

Pre-processing is `BitImageProcessor`'s (DINOv2's): shortest edge resized, center crop, ImageNet normalisation,
built from the config (so an artifact needs no extra files). Output: the patch tokens after the final layer norm
(the class token dropped), [B, P, D] with P = (crop / patch)^2.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from transformers import AutoImageProcessor, BitImageProcessor, Dinov2Config, Dinov2Model

from ..config import SpatialEncoderConfig
from ..errors import WeightsError
from .weights import check_loading_info


def dinov2_config(config: SpatialEncoderConfig) -> Dinov2Config:
    return Dinov2Config(hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
                        num_attention_heads=config.num_attention_heads, mlp_ratio=config.mlp_ratio,
                        patch_size=config.patch_size, image_size=config.image_size,
                        layer_norm_eps=config.layer_norm_eps, layerscale_value=config.layerscale_value,
                        use_swiglu_ffn=config.use_swiglu_ffn)


def image_processor(config: SpatialEncoderConfig) -> BitImageProcessor:
    return BitImageProcessor(size={"shortest_edge": config.resize_size},
                             crop_size={"height": config.crop_size, "width": config.crop_size},
                             image_mean=list(config.image_mean), image_std=list(config.image_std))


class SpatialEncoder(nn.Module):
    def __init__(self, model: Dinov2Model, config: SpatialEncoderConfig):
        super().__init__()
        self.model = model
        self.settings = config
        self._processor = image_processor(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @classmethod
    def build(cls, config: SpatialEncoderConfig) -> "SpatialEncoder":
        """Freshly initialised weights (callers seed or load over them)."""
        return cls(Dinov2Model(dinov2_config(config)), config)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "SpatialEncoder":
        """A Hugging Face DINOv2 folder (`config.json`, weights, `preprocessor_config.json`)."""
        folder = Path(folder)
        for name in ("config.json", "preprocessor_config.json"):
            if not (folder / name).is_file():
                raise WeightsError(f"not a DINOv2 folder (no {name}): {folder}")
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        if model_type != "dinov2":
            raise WeightsError(f"not a DINOv2 folder (model_type={model_type!r}): {folder}")
        model, info = Dinov2Model.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
        check_loading_info(info, f"DINOv2 checkpoint {folder}")
        c = model.config
        if c.hidden_act != "gelu" or not c.qkv_bias:
            raise WeightsError(f"{folder}: DINOv2 with hidden_act={c.hidden_act!r}, qkv_bias={c.qkv_bias} is not "
                               "supported (gelu and qkv_bias=True are)")
        processor = AutoImageProcessor.from_pretrained(folder)
        config = SpatialEncoderConfig(
            hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
            mlp_ratio=c.mlp_ratio, patch_size=c.patch_size, image_size=c.image_size,
            crop_size=processor.crop_size["height"], resize_size=processor.size["shortest_edge"],
            layer_norm_eps=c.layer_norm_eps, layerscale_value=c.layerscale_value, use_swiglu_ffn=c.use_swiglu_ffn,
            image_mean=tuple(processor.image_mean), image_std=tuple(processor.image_std))
        return cls(model, config)

    def save_pretrained(self, folder: str | Path) -> None:
        self.model.save_pretrained(folder)
        self._processor.save_pretrained(folder)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The conditioning image as DINOv2 takes it: [1, 3, crop, crop] fp32 (host side)."""
        return self._processor(images=image, return_tensors="pt")["pixel_values"]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values [B, 3, crop, crop] -> patch features [B, P, D] (fp32)."""
        out = self.model(pixel_values=pixel_values.to(self.dtype)).last_hidden_state
        return out[:, 1:].float()


__all__ = ["SpatialEncoder", "dinov2_config", "image_processor"]
