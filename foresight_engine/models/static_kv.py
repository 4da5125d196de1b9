"""A static KV cache (gpt-fast style) and a fixed-shape greedy decode step over it.

Keys/values live in preallocated buffers [layers, B, kv_heads, max_len, head_dim]; a decode step writes one slot
with `index_copy_` and attends over the whole buffer with a mask, so every step has the same shapes (compilable,
graph-capturable). The prefill keeps using transformers' `DynamicCache` (exact-length attention, the reference
numerics); `load` copies its prompt into the buffers and `to_dynamic` hands a prefix back for a session's next
prefill. The decode step reuses the backbone's own submodules and weights.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb


class StaticKVCache:
    def __init__(self, num_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu"):
        shape = (num_layers, batch, kv_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0  # filled slots (host-side: only read between steps, never inside a graph)
        self.max_len = max_len

    def load(self, cache: DynamicCache) -> None:
        """Copy a DynamicCache's contents into slots [0, n)."""
        n = cache.get_seq_length()
        if n > self.max_len:
            raise ValueError(f"cache of {n} tokens does not fit a static cache of {self.max_len}")
        for i, layer in enumerate(cache.layers):
            self.keys[i, :, :, :n].copy_(layer.keys)
            self.values[i, :, :, :n].copy_(layer.values)
        self.length = n

    def to_dynamic(self, length: int, config) -> DynamicCache:
        """The first `length` slots as a DynamicCache (copies), to prefill new tokens on top of."""
        cache = DynamicCache(config=config)
        for i in range(self.keys.shape[0]):
            cache.update(self.keys[i, :, :, :length].clone(), self.values[i, :, :, :length].clone(), i)
        return cache


class StaticDecoder(nn.Module):
    """One greedy-decoding step of the backbone's language model on a `StaticKVCache`."""

    def __init__(self, language_model: nn.Module, lm_head: nn.Module):
        super().__init__()
        self.language_model = language_model
        self.lm_head = lm_head
        cfg = language_model.config
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads

    def new_cache(self, max_len: int, batch: int = 1) -> StaticKVCache:
        weight = self.lm_head.weight
        return StaticKVCache(len(self.language_model.layers), batch, self.kv_heads, max_len, self.head_dim,
                             weight.dtype, weight.device)

    def forward(self, token_ids: torch.Tensor, position: torch.Tensor, slot: torch.Tensor,
                cache: StaticKVCache) -> torch.Tensor:
        """`token_ids` [B, 1] at text rope `position` [B], written to cache `slot` (0-d long) -> logits [B, V]."""
        lm = self.language_model
        x = lm.embed_tokens(token_ids)  # [B, 1, D]
        b = x.shape[0]
        cos, sin = lm.rotary_emb(x, position.view(1, b, 1).expand(3, b, 1))  # [B, 1, d]
        # slots [0, slot] are visible: [1, 1, 1, max_len]
        visible = (torch.arange(cache.max_len, device=x.device) <= slot).view(1, 1, 1, -1)
        for i, layer in enumerate(lm.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(b, 1, -1, self.head_dim).transpose(1, 2)  # [B, H, 1, d]
            k = attn.k_proj(h).view(b, 1, -1, self.head_dim).transpose(1, 2)  # [B, Hkv, 1, d]
            v = attn.v_proj(h).view(b, 1, -1, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            cache.keys[i].index_copy_(2, slot.view(1), k)
            cache.values[i].index_copy_(2, slot.view(1), v)
            out = F.scaled_dot_product_attention(q, cache.keys[i], cache.values[i], attn_mask=visible,
                                                 scale=attn.scaling, enable_gqa=True)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(b, 1, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.lm_head(lm.norm(x)[:, -1]).float()
