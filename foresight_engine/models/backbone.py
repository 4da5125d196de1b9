"""Backbone: Qwen2.5-VL's language model (frozen) plus Q learned query tokens, attending on one KV cache.

`forward` is the one attention-on-cache pass over the language model's own submodules and weights: new tokens
attend to a past (keys/values `[L, B, H_kv, T, d]`, the slots `< past_len` visible) and causally to each other, and
their keys/values are returned, never written here (the runtime writes them into its `KVCache`). It serves:
- `prefill`: the prompt on top of a cached prefix (a session's earlier turns, or nothing), then the query tokens
  reading the prompt. The queries' last-layer hidden states are the world latent [B, Q, D]; their keys/values are
  dropped, so the text answer is exactly the plain VLM's;
- `decode`: one token over the whole fixed-length cache buffer (fixed shapes), returning only its keys/values.
Rotary embeddings are transformers' own (Qwen2.5-VL's multimodal RoPE: position ids are [3, B, S]).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb


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

    def forward(self, embeds: torch.Tensor, position_ids: torch.Tensor, past_keys: torch.Tensor,
                past_values: torch.Tensor, past_len: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`embeds` [B, S, D] at mrope `position_ids` [3, B, S] on top of `past_keys`/`past_values` [L, B, H_kv, T, d]
        (slots `< past_len` visible; None: all T). Returns the normed last hidden states [B, S, D] and the new
        tokens' keys, values [L, B, H_kv, S, d]."""
        lm = self.language_model
        b, s, _ = embeds.shape
        t = past_keys.shape[3]
        device = embeds.device
        cos, sin = lm.rotary_emb(embeds, position_ids)  # [B, S, d]
        causal = torch.ones((s, s), dtype=torch.bool, device=device).tril()
        if past_len is None:
            past = torch.ones((s, t), dtype=torch.bool, device=device)
        else:
            past = (torch.arange(t, device=device) < past_len).expand(s, t)
        mask = torch.cat([past, causal], dim=1)  # [S, T + S]
        x = embeds
        new_keys, new_values = [], []
        for i, layer in enumerate(lm.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(b, s, -1, attn.head_dim).transpose(1, 2)  # [B, H, S, d]
            k = attn.k_proj(h).view(b, s, -1, attn.head_dim).transpose(1, 2)  # [B, H_kv, S, d]
            v = attn.v_proj(h).view(b, s, -1, attn.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            new_keys.append(k)
            new_values.append(v)
            keys = torch.cat([past_keys[i].to(k.dtype), k], dim=2)  # [B, H_kv, T + S, d]
            values = torch.cat([past_values[i].to(v.dtype), v], dim=2)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attn.scaling,
                                                 enable_gqa=True)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(b, s, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return lm.norm(x), torch.stack(new_keys), torch.stack(new_values)

    def prefill(self, embeds: torch.Tensor, position_ids: torch.Tensor, past_keys: torch.Tensor,
                past_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Prompt `embeds` [B, S, D] at `position_ids` [3, B, S] after a cached prefix `past_keys`/`past_values`
        [L, B, H_kv, P, d] (P may be 0). Returns logits [B, V] at the last prompt token, the world latent [B, Q, D],
        and the prompt's keys, values [L, B, H_kv, S, d] (the query tokens' are not kept)."""
        hidden, keys, values = self(embeds, position_ids, past_keys, past_values)
        logits = self.lm_head(hidden[:, -1]).float()
        batch, q = embeds.shape[0], self.query_tokens.shape[0]
        start = position_ids.amax(dim=(0, 2)) + 1  # [B]: the first position after the prompt
        queries = self.query_tokens.to(self.dtype).unsqueeze(0).expand(batch, -1, -1)  # [B, Q, D]
        positions = (start.view(1, batch, 1) + torch.arange(q, device=start.device)).expand(3, -1, -1)
        world_latent, _, _ = self(queries, positions, torch.cat([past_keys.to(keys.dtype), keys], dim=3),
                                  torch.cat([past_values.to(values.dtype), values], dim=3))
        return logits, world_latent, keys, values

    def decode(self, token_ids: torch.Tensor, position: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
               slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One greedy-decoding step: `token_ids` [B, 1] at text `position` [B] over the cache buffers
        [L, B, H_kv, T, d] filled below `slot` (0-d). Returns logits [B, V] and the token's keys, values
        [L, B, H_kv, 1, d]."""
        b = token_ids.shape[0]
        embeds = self.language_model.embed_tokens(token_ids)
        hidden, new_keys, new_values = self(embeds, position.view(1, b, 1).expand(3, b, 1), keys, values, slot)
        return self.lm_head(hidden[:, -1]).float(), new_keys, new_values
