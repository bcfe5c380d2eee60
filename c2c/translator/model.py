"""The translated-context channel: a sharer's K/V of a context, mapped layer by layer into the receiver's K/V space.

Per receiver layer ``l``, one linear map reads the position-free K and V of a window of sharer layers around
``l``'s proportional partner (``spread`` layer map, ``window`` layers either side) at one sharer token and
writes the receiver's position-free K and V for one position::

    x = [K_s1, V_s1, K_s2, V_s2, ...]            # (T, D)   D = layers * 2 * H_S * d_S
    z = (x - mean) / scale
    y = z @ W + out_mean [+ up(gelu(down(z)))]   # (T, O)   O = 2 * H_R * d_R, split into K and V

The maps are fitted in closed form (``translator.fit.TranslatorFit``): ridge regression toward the receiver's
own K/V of the same text, which needs no labels and no backward pass. Statistics stream in float64, so any number
of tokens fits in bounded memory; the ridge strength is chosen per layer and per K/V on held-out texts. Phase 2
(``c2c train`` with steps, ``training.objectives``) then trains the maps, and the optional low-rank residual, by
self-distillation through the receiver.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..core import cache as kvcache
from ..core.models import LoadedModel
from ..core.rotary import Rotary
from ..core.tensors import pad_rows, position_ids, row_mask
from ..inputs.align import layer_map
from ..runtime import passes
from .config import TranslatorConfig

CONSTANT_SCALE = 1e-4  # inputs whose fitted scale is below this share of the median are constants


def source_layers(receiver_layers: int, sharer_layers: int, window: int, global_layers: Sequence[int] = ()
                  ) -> list[list[int]]:
    """Per receiver layer, the ``2 * window + 1`` sharer layers its map reads: the global-attention layer nearest
    its proportional partner, and the ``2 * window`` other layers nearest the partner (ties: nearer that global
    layer, then lower). ``global_layers``: the sharer's layers that attend to the whole context, when some of its
    layers only see a sliding window (Gemma 3); empty when every layer is global, where the rule reads the
    partner's window, shifted inward at the ends so that every map has the same input size."""
    width = min(2 * window + 1, sharer_layers)
    sources = []
    for partner in layer_map("spread", receiver_layers, sharer_layers):
        anchor = min(global_layers, key=lambda g: (abs(g - partner), g)) if global_layers else partner
        others = sorted((l for l in range(sharer_layers) if l != anchor),
                        key=lambda l: (abs(l - partner), abs(l - anchor), l))
        sources.append(sorted([anchor, *others[:width - 1]]))
    return sources


class ContextTranslator(nn.Module):
    """One sharer's translator into the receiver: a linear map per receiver layer (see module docstring)."""

    def __init__(self, sharer_shape, receiver_shape, config: TranslatorConfig, sources: list[list[int]] | None = None):
        super().__init__()
        self.config = config
        self.sources = sources or source_layers(receiver_shape.num_layers, sharer_shape.num_layers, config.window)
        if len({len(s) for s in self.sources}) != 1 or len(self.sources) != receiver_shape.num_layers:
            raise ValueError(f"translator sources {self.sources} must give every one of the receiver's "
                             f"{receiver_shape.num_layers} layers the same number of sharer layers")
        self.receiver_heads, self.receiver_dim = receiver_shape.num_kv_heads, receiver_shape.head_dim
        inputs = len(self.sources[0]) * 2 * sharer_shape.num_kv_heads * sharer_shape.head_dim
        outputs = 2 * receiver_shape.num_kv_heads * receiver_shape.head_dim
        self.maps = nn.ModuleList(nn.Linear(inputs, outputs, bias=False) for _ in self.sources)
        for linear in self.maps:
            nn.init.zeros_(linear.weight)  # an unfitted translator writes each layer's mean (zero) K/V
        self.residuals = nn.ModuleList(LowRankResidual(inputs, outputs, config.residual_rank) for _ in self.sources) \
            if config.residual_rank else None
        self.register_buffer("input_mean", torch.zeros(len(self.sources), inputs))
        self.register_buffer("input_scale", torch.ones(len(self.sources), inputs))
        self.register_buffer("output_mean", torch.zeros(len(self.sources), outputs))

    def forward(self, sharer_kv: Sequence[kvcache.KV]) -> list[kvcache.KV]:
        """Position-free sharer K/V per sharer layer (B, H_S, T, d_S) -> per receiver layer (B, H_R, T, d_R)."""
        flat = [torch.cat([k, v], dim=1).transpose(1, 2).flatten(2) for k, v in sharer_kv]  # (B, T, 2 H_S d_S)
        out = []
        for y in self.map_features(flat):  # (B, T, O)
            batch, tokens, _ = y.shape
            y = y.view(batch, tokens, 2 * self.receiver_heads, self.receiver_dim).transpose(1, 2)  # (B, 2 H_R, T, d_R)
            out.append((y[:, :self.receiver_heads], y[:, self.receiver_heads:]))
        return out

    def map_features(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per sharer layer (..., 2 H_S d_S) flat K and V features -> per receiver layer (..., 2 H_R d_R).

        While the maps can train (grad enabled and their weights require it), each map standardises its input and
        computes in its float32 master weights: the coordinates phase 2's optimizer moves. Otherwise the
        standardisation is folded into the maps, the maps that read the same sharer layers are one matrix
        product, and it computes in the features' dtype (the models'): see ``folded``."""
        if self.residuals is None and not (torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())):
            return self._folded_features(features)
        dtype = self.maps[0].weight.dtype
        out = []
        for layer, (sources, linear) in enumerate(zip(self.sources, self.maps)):
            x = torch.cat([features[s].to(dtype) for s in sources], dim=-1)  # (..., D)
            z = (x - self.input_mean[layer]) / self.input_scale[layer]
            y = linear(z) + self.output_mean[layer]  # (..., O)
            out.append(y if self.residuals is None else y + self.residuals[layer](z))
        return out

    def _folded_features(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(self.maps)
        for sources, (layers, weight, bias) in self.folded(features[0].dtype, features[0].device).items():
            x = torch.cat([features[s] for s in sources], dim=-1)  # (..., D)
            y = torch.addmm(bias, x.flatten(0, -2), weight).unflatten(0, x.shape[:-1])  # (..., k O)
            for layer, part in zip(layers, y.chunk(len(layers), dim=-1)):
                out[layer] = part
        return out

    def weights_state(self) -> tuple:
        """Changes whenever the weights or statistics do, in place too (an optimizer step, a load)."""
        return tuple((t.data_ptr(), t._version) for t in self.state_dict().values())

    @torch.no_grad()
    def folded(self, dtype: torch.dtype, device: torch.device) -> dict[tuple[int, ...], tuple[list[int], torch.Tensor,
                                                                                              torch.Tensor]]:
        """Per distinct tuple of source layers: (the receiver layers whose maps read them, (D, k O) weights, (k O,)
        bias) with ``y = x @ W + b`` equal to each map's ``((x - mean) / scale) @ W_l + out_mean``. Computed once per
        state of the weights."""
        state = (dtype, device, self.weights_state())
        if getattr(self, "_folded", (None,))[0] != state:
            groups: dict[tuple[int, ...], list[int]] = {}
            for layer, sources in enumerate(self.sources):
                groups.setdefault(tuple(sources), []).append(layer)
            folded = {}
            for sources, layers in groups.items():
                weights, biases = [], []
                for layer in layers:
                    weight = self.maps[layer].weight.T / self.input_scale[layer][:, None]  # (D, O)
                    weights.append(weight)
                    biases.append(self.output_mean[layer] - self.input_mean[layer] @ weight)
                folded[sources] = (layers, torch.cat(weights, 1).to(device, dtype), torch.cat(biases).to(device, dtype))
            self._folded = (state, folded)
        return self._folded[1]


def neutral_constant_inputs(scale: torch.Tensor) -> torch.Tensor:
    """Input scales (..., D) with those below ``CONSTANT_SCALE`` of their row's median set to 1: an input the fit saw
    as constant (e.g. a dimension that is ~1e-9 in float32, whose spread is ~1e-6) then enters its map as the tiny
    value it is, not divided by its tiny spread. In half precision its rounding noise (~1e-3) would otherwise be
    amplified a thousandfold and swamp the map. The fit's regression gives such an input no weight to speak of."""
    constant = scale < CONSTANT_SCALE * scale.median(dim=-1, keepdim=True).values
    return scale.masked_fill(constant, 1.0)


class LowRankResidual(nn.Module):
    """``up(gelu(down(z)))``, rank ``rank``, added to a linear map's output; ``up`` starts at zero, so a residual
    added to a fitted translator leaves it unchanged until it trains."""

    def __init__(self, inputs: int, outputs: int, rank: int):
        super().__init__()
        self.down = nn.Linear(inputs, rank, bias=False)
        self.up = nn.Linear(rank, outputs, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(torch.nn.functional.gelu(self.down(z)))


# ------------------------------------------------------------------------------------------------ K/V of text
READ_CHUNK_TOKENS = 512  # a context is read in pieces of this many tokens: memory bounded at any length


def position_free_kv(model: LoadedModel, ids: torch.Tensor, mask: torch.Tensor) -> list[kvcache.KV]:
    """A model's position-free K/V of left-padded ``ids`` (B, N): per layer (B, H, N, d), rotary removed. Every
    position of every layer is kept (a sliding-window layer's too), read ``READ_CHUNK_TOKENS`` at a time."""
    kv = passes.model_kv(model.model, ids, mask, passes.Chunks(READ_CHUNK_TOKENS, lambda: None))
    rotary, positions = Rotary(model.model), position_ids(mask)
    return [(rotary.remove(k, layer, positions), v) for layer, (k, v) in enumerate(kv)]


def token_kv(model: LoadedModel, rows: Sequence[Sequence[int]], picks: Sequence[Sequence[int]]) -> list[kvcache.KV]:
    """A model's position-free K/V of token ``rows`` (read in one left-padded batch) at the ``picks`` of each row (its
    token indices), every row's in turn as one sequence: per layer (1, H, sum of picks, d)."""
    ids = pad_rows(rows, model.tokenizer.pad_token_id, left=True).to(model.model.device)
    mask = row_mask(rows, left=True).to(ids.device)
    kv = position_free_kv(model, ids, mask)  # per layer (B, H, N, d)
    row = torch.tensor([b for b, pick in enumerate(picks) for _ in pick], device=ids.device)
    column = torch.tensor([ids.shape[1] - len(rows[b]) + t for b, pick in enumerate(picks) for t in pick],
                          device=ids.device)
    return [tuple(kvcache.select_tokens(t, row, column) for t in layer) for layer in kv]
