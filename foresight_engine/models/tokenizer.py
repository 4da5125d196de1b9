"""A byte-level BPE tokenizer and Qwen2.5-VL processor built locally, for presets without real weights.

The tokenizer has Qwen2.5-VL's special tokens and chat template, so prompts and answers are real text and the
image placeholder logic of transformers' processor works unchanged. Training is deterministic (fixed corpus,
one thread), so the same preset always gets the same vocabulary.
"""
from __future__ import annotations

import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2_5_VLProcessor, Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from ..config import ModelConfig

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>",
)

# Qwen2-VL's chat template: a default system turn, `<|vision_start|><|image_pad|><|vision_end|>` per image.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = (
    "You are a helpful assistant.",
    "What happens next in this scene? Describe the motion of every object.",
    "The red ball rolls to the left, hits the wall and bounces back towards the camera.",
    "A robot arm picks up the blue cube and places it on top of the green cylinder.",
    "The car turns right at the intersection while a cyclist waits at the crossing.",
    "Water pours from the glass onto the table and spreads towards the edge.",
    "Predict the next five seconds of video given the current image and the conversation.",
    "The person opens the door, walks through the hallway and sits down on the chair.",
    "Clouds move slowly across the sky; the shadow of the tree shortens as the sun rises.",
    "Yes. No. Maybe. First, then, finally: the answer is 0 1 2 3 4 5 6 7 8 9.",
)


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of `vocab_size` tokens (specials included) on a fixed corpus."""
    # tokenizers parallelises merges over threads; one thread keeps ties (and so the vocabulary) reproducible
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=list(SPECIAL_TOKENS[1:]), chat_template=CHAT_TEMPLATE,
    )


def build_processor(config: ModelConfig, tokenizer: PreTrainedTokenizerFast) -> Qwen2_5_VLProcessor:
    """transformers' Qwen2.5-VL processor around `tokenizer`, sized by the config's pixel budget."""
    vision, proc = config.vision, config.processor
    image_processor = Qwen2VLImageProcessor(
        min_pixels=proc.min_pixels, max_pixels=proc.max_pixels, patch_size=vision.patch_size,
        temporal_patch_size=vision.temporal_patch_size, merge_size=vision.spatial_merge_size)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
