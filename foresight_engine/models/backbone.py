"""Backbone: Qwen2.5-VL's language model (frozen) plus Q learned query tokens.

The prefill runs the prompt (text + visual tokens) into a KV cache, then runs the query tokens *reading* that cache.
Their last-layer hidden states are the world latent [B, Q, D]. The cache is cropped back to the prompt, so the
query tokens are never written into it and the text answer is exactly the plain VLM's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache


@dataclass
class PrefillOutput:
    logits: torch.Tensor  # [B, V] at the last prompt position
    cache: DynamicCache  # the prompt's keys/values only
    world_latent: torch.Tensor  # [B, Q, D]
    next_position: torch.Tensor  # [B] the (text) rope position of the first answer token
    static_cache: Any = None  # the StaticKVCache the text decode wrote into (models/static_kv.py), if any


class Backbone(nn.Module):
    def __init__(self, language_model: nn.Module, lm_head: nn.Module, num_query_tokens: int, image_token_id: int):
        super().__init__()
        self.language_model = language_model
        self.lm_head = lm_head
        self.image_token_id = image_token_id
        hidden = language_model.config.hidden_size
        # Learned: initialised like the token embeddings they sit beside.
        self.query_tokens = nn.Parameter(torch.randn(num_query_tokens, hidden) * 0.02)  # [Q, D]

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def embed(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the image placeholders replaced by visual tokens: [B, S, D]."""
        embeds = self.language_model.embed_tokens(input_ids)
        if image_embeds is None:
            return embeds
        mask = (input_ids == self.image_token_id).unsqueeze(-1)  # [B, S, 1]
        return embeds.masked_scatter(mask, image_embeds.to(embeds.dtype))

    def step(self, embeds: torch.Tensor, position_ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        """Run `embeds` [B, S, D] at `position_ids` [3, B, S] on top of `cache` (appended); last hidden [B, S, D]."""
        out = self.language_model(inputs_embeds=embeds, position_ids=position_ids, past_key_values=cache,
                                  use_cache=True)
        return out.last_hidden_state

    def prefill(self, embeds: torch.Tensor, position_ids: torch.Tensor,
                cache: DynamicCache | None = None) -> PrefillOutput:
        """Prompt `embeds` [B, S, D] at mrope `position_ids` [3, B, S], optionally after an existing `cache`."""
        cache = cache if cache is not None else DynamicCache(config=self.language_model.config)
        hidden = self.step(embeds, position_ids, cache)
        logits = self.lm_head(hidden[:, -1]).float()  # [B, V]
        next_position = position_ids.amax(dim=(0, 2)) + 1  # [B]
        world_latent = self.world_latent(cache, next_position)
        cache.crop(-world_latent.shape[1])  # drop the query tokens' keys/values again
        return PrefillOutput(logits=logits, cache=cache, world_latent=world_latent, next_position=next_position)

    def world_latent(self, cache: DynamicCache, start_position: torch.Tensor) -> torch.Tensor:
        """Query tokens read `cache` (and are appended to it: callers crop). Returns [B, Q, D]."""
        batch = start_position.shape[0]
        q = self.query_tokens.shape[0]
        queries = self.query_tokens.to(self.dtype).unsqueeze(0).expand(batch, -1, -1)  # [B, Q, D]
        positions = start_position.view(1, batch, 1) + torch.arange(q, device=start_position.device)  # [1, B, Q]
        return self.step(queries, positions.expand(3, -1, -1), cache)

    def decode_step(self, token_ids: torch.Tensor, position: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        """One greedy-decoding step: `token_ids` [B, 1] at text `position` [B] -> logits [B, V]."""
        embeds = self.language_model.embed_tokens(token_ids)
        positions = position.view(1, -1, 1).expand(3, -1, 1)
        return self.lm_head(self.step(embeds, positions, cache)[:, -1]).float()
