"""The one KV cache (gpt-fast style): keys/values preallocated at a fixed length, written by slot.

`KVCache` holds `[layers, B, kv_heads, max_len, head_dim]` buffers for keys and values and a host-side count of
the filled slots (`length`). Every attention over it is `Backbone.forward` (attention on the cache):
- the prefill runs the prompt on top of `filled()` (the exact prefix: nothing masked) and the runtime `append`s
  the prompt's keys/values at `[length, length + S)`;
- a decode step (`decode_step`) runs one token over a fixed span of the buffer (the whole buffer for a built
  stage; else the request's slots rounded up to a power of two, `attention_span`) with the slots `>= slot` masked,
  so every step of a request has the same shapes (compilable, graph-capturable, buildable with fixed shapes), and
  the runtime writes the token's keys/values at `slot` with `index_copy_` (`write_at`, a device index: no host
  read);
- a session keeps its cache between steps: reusing a prefix is setting `length` (`crop`).
Slots past `length` may hold stale values from an earlier request: they are always masked, never read.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..config import ModelConfig
from ..errors import PromptError

StageFn = Callable[..., tuple[torch.Tensor, ...]]


def default_length(config: ModelConfig) -> int:
    """The engine's cache length from the config: the prompt limit plus room for the query tokens (read on top of
    the prompt) or the longest answer, within the language model's context."""
    room = max(config.adapter.num_query_tokens, config.generation.limits.max_new_tokens)
    return min(config.text.max_position_embeddings, config.processor.max_prompt_tokens + room)


MIN_SPAN = 256  # the shortest decode span: few distinct shapes, each compiled or captured once


def attention_span(needed: int, max_len: int) -> int:
    """The slots a decode step attends over for a request needing `needed` slots: the next power of two (at least
    `MIN_SPAN`), at most `max_len`. Reading the whole buffer every token would cost (max_len / needed) times the
    cache traffic (measured ~1.8x per token on the small preset on a CPU)."""
    span = MIN_SPAN
    while span < needed:
        span *= 2
    return min(span, max_len)


class KVCache:
    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys = keys  # [L, B, H_kv, max_len, d]
        self.values = values
        self.length = 0  # filled slots (host-side: read between calls, never inside a graph)

    @classmethod
    def allocate(cls, config: ModelConfig, max_len: int, dtype: torch.dtype, device: torch.device | str,
                 batch: int = 1) -> "KVCache":
        t = config.text
        shape = (t.num_hidden_layers, batch, t.num_key_value_heads, max_len, t.head_dim)
        return cls(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    def filled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the filled slots: keys, values [L, B, H_kv, length, d]."""
        return self.window(self.length)

    def window(self, span: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of the first `span` slots: keys, values [L, B, H_kv, span, d] (writes show through)."""
        return self.keys[:, :, :, :span], self.values[:, :, :, :span]

    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write `keys`/`values` [L, B, H_kv, S, d] at slots [length, length + S) (a host-known start: prefill)."""
        start, end = self.length, self.length + keys.shape[3]
        if end > self.max_len:
            raise PromptError(f"{end} tokens do not fit the KV cache of {self.max_len} slots (Engine max_seq_len)")
        self.keys[:, :, :, start:end].copy_(keys)
        self.values[:, :, :, start:end].copy_(values)
        self.length = end

    def write_at(self, slot: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write `keys`/`values` [L, B, H_kv, S, d] at slots [slot, slot + S), `slot` a 0-d device tensor (decode:
        graph-safe). The caller advances `length`."""
        index = slot.view(1) + torch.arange(keys.shape[3], device=slot.device)
        self.keys.index_copy_(3, index, keys.to(self.keys.dtype))
        self.values.index_copy_(3, index, values.to(self.values.dtype))

    def crop(self, length: int) -> None:
        """Keep the first `length` slots (a session reusing its cached prefix)."""
        self.length = min(self.length, length)


def decode_step(decode: StageFn, cache: KVCache, token_ids: torch.Tensor, position: torch.Tensor,
                slot: torch.Tensor, span: int | None = None) -> torch.Tensor:
    """One greedy-decoding step on the device: the `decode` stage (`token_ids` [B, 1] at text rope `position` [B],
    attending to the slots before `slot` within the first `span`; None: the whole buffer) and the write of its
    keys/values at `slot`. Returns logits [B, V]."""
    keys, values = cache.window(cache.max_len if span is None else span)
    logits, new_keys, new_values = decode(token_ids, position, keys, values, slot)
    cache.write_at(slot, new_keys, new_values)
    return logits


__all__ = ["KVCache", "MIN_SPAN", "attention_span", "decode_step", "default_length"]
