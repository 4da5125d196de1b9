"""Qwen2.5-VL, as transformers builds it, from the project's typed config.

The vision tower and the backbone are separate components, but both are views of one
`Qwen2_5_VLForConditionalGeneration`, so real checkpoints load unchanged and `generate()` stays the reference.
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from ..config import ModelConfig, TextConfig, VisionConfig


@dataclass(frozen=True)
class SpecialTokenIds:
    """Token ids the model config must agree on with the tokenizer."""

    image: int
    video: int
    vision_start: int
    vision_end: int
    eos: int
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "SpecialTokenIds":
        ids = tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"])
        return cls(*ids, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)


def qwen_vl_config(config: ModelConfig, ids: SpecialTokenIds) -> Qwen2_5_VLConfig:
    v, t = config.vision, config.text
    vision = dict(depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_heads=v.num_heads,
                  out_hidden_size=v.out_hidden_size, patch_size=v.patch_size, spatial_merge_size=v.spatial_merge_size,
                  temporal_patch_size=v.temporal_patch_size, window_size=v.window_size,
                  fullatt_block_indexes=list(v.fullatt_block_indexes))
    text = dict(hidden_size=t.hidden_size, num_hidden_layers=t.num_hidden_layers,
                num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads,
                intermediate_size=t.intermediate_size, vocab_size=t.vocab_size,
                max_position_embeddings=t.max_position_embeddings, rms_norm_eps=t.rms_norm_eps,
                rope_parameters={"rope_type": "default", "rope_theta": t.rope_theta,
                                 "mrope_section": list(t.mrope_section)},
                eos_token_id=ids.eos, pad_token_id=ids.pad, bos_token_id=None)
    hf = Qwen2_5_VLConfig(vision_config=vision, text_config=text, image_token_id=ids.image,
                          video_token_id=ids.video, vision_start_token_id=ids.vision_start,
                          vision_end_token_id=ids.vision_end, tie_word_embeddings=t.tie_word_embeddings,
                          eos_token_id=ids.eos, pad_token_id=ids.pad)
    hf._attn_implementation = "sdpa"
    return hf


def typed_configs(hf: Qwen2_5_VLConfig) -> tuple[VisionConfig, TextConfig]:
    """The project's vision/text configs read back from a Hugging Face config (for real checkpoints)."""
    v, t = hf.vision_config, hf.text_config
    rope = getattr(t, "rope_parameters", None) or getattr(t, "rope_scaling", None) or {}
    theta = rope.get("rope_theta", getattr(t, "rope_theta", 1_000_000.0))
    vision = VisionConfig(depth=v.depth, hidden_size=v.hidden_size, intermediate_size=v.intermediate_size,
                          num_heads=v.num_heads, out_hidden_size=v.out_hidden_size,
                          fullatt_block_indexes=tuple(v.fullatt_block_indexes), patch_size=v.patch_size,
                          spatial_merge_size=v.spatial_merge_size, temporal_patch_size=v.temporal_patch_size,
                          window_size=v.window_size)
    text = TextConfig(hidden_size=t.hidden_size, num_hidden_layers=t.num_hidden_layers,
                      num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads,
                      intermediate_size=t.intermediate_size, vocab_size=t.vocab_size,
                      mrope_section=tuple(rope["mrope_section"]), max_position_embeddings=t.max_position_embeddings,
                      rope_theta=float(theta), rms_norm_eps=t.rms_norm_eps,
                      tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)))
    return vision, text


def build_qwen_vl(config: ModelConfig, ids: SpecialTokenIds) -> Qwen2_5_VLForConditionalGeneration:
    """Randomly initialised model (call under a seeded RNG, or on the meta device for planning)."""
    return Qwen2_5_VLForConditionalGeneration(qwen_vl_config(config, ids)).eval()
