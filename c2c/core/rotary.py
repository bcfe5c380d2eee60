"""A model's rotary position embedding, per layer: remove it from cached keys, or apply it at new positions.

Cached keys are rotated by the position they were computed at. Networks that carry K/V from one model, or
one position, to another work in position-free space: remove the source layer's rotation at the source
positions, apply the target layer's at the target positions. Layers may differ (Gemma 3's sliding and
global layers use different bases), so everything here is per layer.

``transformers`` rotates as ``k * cos + rotate_half(k) * sin`` with ``cos``/``sin`` repeated over the two
halves of the head dimension (possibly scaled by the rope type's attention factor ``s``, so that
``cos^2 + sin^2 = s^2``). Since ``rotate_half`` is linear with ``rotate_half^2 = -1`` and commutes with those
products, the inverse is ``(k * cos - rotate_half(k) * sin) / (cos^2 + sin^2)``: exact up to float rounding.
Partial rotary (only the first ``r < d`` dimensions rotated) is handled the same way on those dimensions.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from .tensors import tensor_version


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rotary:
    """The rotary embedding of one model's decoder layers.

    ``positions`` are (B, N) integer tensors; keys are (B, H, N, d)."""

    def __init__(self, model: nn.Module):
        base = getattr(model, "base_model", model)
        self.embedding = getattr(base, "rotary_emb", None)
        if self.embedding is None:
            raise ValueError(f"{type(model).__name__} has no rotary embedding (`rotary_emb`); position-free K/V "
                             "needs a RoPE model (Llama, Qwen, Gemma, Mistral and similar)")
        config = model.config.get_text_config(decoder=True)
        self.layer_types = getattr(config, "layer_types", None)
        self.per_layer_type = "layer_type" in inspect.signature(self.embedding.forward).parameters
        self.num_layers = config.num_hidden_layers
        self._last: tuple | None = None  # (positions and what they were computed for, (cos, sin)): see cos_sin

    def cos_sin(self, layer: int, positions: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, N, r) cosine and sine of ``layer`` at ``positions``, in float32. The last result is kept: every
        layer of one type at the same ``positions`` (the same tensor, unmodified) shares it."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} is out of range for a model with {self.num_layers} layers")
        kind = self.layer_types[layer] if self.per_layer_type else None
        key = (positions, tensor_version(positions), kind, like.device)
        last = self._last
        if last is None or not (last[0][0] is key[0] and last[0][1:] == key[1:]):
            probe = like.new_zeros(1, dtype=torch.float32)
            cos, sin = self.embedding(probe, positions, layer_type=kind) if kind is not None else \
                self.embedding(probe, positions)
            self._last = last = (key, (cos.float()[:, None], sin.float()[:, None]))
        return last[1]

    def apply(self, keys: torch.Tensor, layer: int, positions: torch.Tensor) -> torch.Tensor:
        """Position-free keys (B, H, N, d) -> keys as ``layer`` caches them at ``positions`` (B, N)."""
        cos, sin = self.cos_sin(layer, positions, keys)
        rotated, rest = _split(keys.float(), cos.shape[-1])
        out = rotated * cos + rotate_half(rotated) * sin
        return torch.cat((out, rest), dim=-1).to(keys.dtype)

    def remove(self, keys: torch.Tensor, layer: int, positions: torch.Tensor) -> torch.Tensor:
        """Keys (B, H, N, d) that ``layer`` cached at ``positions`` (B, N) -> position-free keys."""
        cos, sin = self.cos_sin(layer, positions, keys)
        rotated, rest = _split(keys.float(), cos.shape[-1])
        out = (rotated * cos - rotate_half(rotated) * sin) / (cos * cos + sin * sin)
        return torch.cat((out, rest), dim=-1).to(keys.dtype)

    def move(self, keys: torch.Tensor, layer: int, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        """Keys cached at positions ``old`` re-rotated as if computed at ``new`` (same layer)."""
        return self.apply(self.remove(keys, layer, old), layer, new)


def _split(keys: torch.Tensor, rotary_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    return keys[..., :rotary_dim], keys[..., rotary_dim:]
