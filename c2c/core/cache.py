"""The one place that reads and writes per-layer keys/values of ``transformers`` Cache objects.

Tensors are (B, H, N, d) everywhere, as the Cache API stores them.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

KV = tuple[torch.Tensor, torch.Tensor]


def full_length_cache() -> DynamicCache:
    """A cache that keeps every position in every layer.

    Built without the model config, so sliding-window layers (Gemma 3) are plain full layers: the model still
    masks attention to its window, but positions older than the window keep their keys/values, which fusion
    needs for prompts longer than the window.
    """
    return DynamicCache()


def cache_from_kv(layers: list[KV]) -> DynamicCache:
    cache = DynamicCache()
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache


def append_kv(cache: DynamicCache, layers: list[KV]) -> None:
    """Append positions to every layer (e.g. translated K/V written where a context would stand)."""
    if len(layers) != len(cache.layers):
        raise ValueError(f"appending {len(layers)} layers to a cache of {len(cache.layers)}")
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)


def layer_kv(cache: DynamicCache, layer: int) -> KV:
    entry = cache.layers[layer]
    return entry.keys, entry.values


def all_kv(cache: DynamicCache) -> list[KV]:
    return [layer_kv(cache, layer) for layer in range(len(cache.layers))]


def set_layer_kv(cache: DynamicCache, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Replace a layer's keys/values (same shape); autograd flows through the new tensors."""
    entry = cache.layers[layer]
    if not isinstance(entry, DynamicLayer) or entry.keys.shape != keys.shape or entry.values.shape != values.shape:
        raise ValueError(f"cannot replace layer {layer} of {type(entry).__name__} with keys {tuple(keys.shape)}")
    entry.keys, entry.values = keys, values


def select_tokens(kv: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The T (row, position) pairs of kv (B, H, N, d) as one sequence: (1, H, T, d)."""
    return kv[rows, :, positions, :].transpose(0, 1).unsqueeze(0)


def scatter_tokens(values: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of ``select_tokens``: values (1, H, T, d) placed at their (row, position) pairs of a (B, H, N, d)
    tensor shaped like ``like``, zeros elsewhere (differentiable)."""
    batch, heads, tokens, dim = like.shape
    placed = like.new_zeros(batch, tokens, heads, dim).index_put((rows, positions), values[0].transpose(0, 1))
    return placed.transpose(1, 2)


def repeat_rows(cache: DynamicCache, repeats: int | torch.Tensor) -> DynamicCache:
    """A new cache holding each row ``repeats`` times (an int, or a count per row); the original is left
    untouched for reuse, and autograd flows through the copies."""
    return cache_from_kv([(k.repeat_interleave(repeats, dim=0), v.repeat_interleave(repeats, dim=0))
                          for k, v in all_kv(cache)])


def seq_length(cache: DynamicCache) -> int:
    return cache.get_seq_length()
