"""Fitting a ``ContextTranslator`` in closed form: both models read the same texts (one example per sharer token,
its target the receiver token that holds the sharer token's last character), and ``TranslatorFit`` solves the
ridge regressions from statistics streamed in float64. The run that drives it is ``training.fit_translators``."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from ..core import cache as kvcache
from ..core.models import LoadedModel
from ..inputs.align import render
from ..inputs.context import context_block, sharer_reading
from .model import ContextTranslator, neutral_constant_inputs, token_kv


def token_pairs(receiver: LoadedModel, sharer: LoadedModel, text: str) -> tuple[list[int], list[int], list[int], list[int]]:
    """The same ``context_block(text)`` read by both models: (receiver ids, sharer ids, sharer positions of the
    context's tokens, the receiver position each one's target comes from: the receiver token that holds the
    sharer token's last character)."""
    r_view = render(receiver.tokenizer, [{"role": "user", "content": context_block(text)}], chat=False)
    s_view, sharer_positions = sharer_reading(sharer.tokenizer, text)
    ends = [(i, end) for i, (start, end) in enumerate(r_view.offsets) if end > start]
    targets = []
    for position in sharer_positions:
        last = s_view.offsets[position][1] - 1
        targets.append(next(i for i, end in ends if end > last))
    return r_view.ids, s_view.ids, sharer_positions, targets


def flat_features(kv: Sequence[kvcache.KV]) -> list[torch.Tensor]:
    """Per layer (1, H, N, d) K and V -> (N, 2 H d) float32 features on the CPU, as the fit reads them."""
    return [torch.cat([k, v], 1)[0].transpose(0, 1).flatten(1).float().cpu() for k, v in kv]


@torch.no_grad()
def translation_examples(receiver: LoadedModel, sharer: LoadedModel, texts: Sequence[str], batch_size: int = 8
                         ) -> Iterable[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """Per batch of texts: (per sharer layer (N, 2 H_S d_S) inputs, per receiver layer (N, 2 H_R d_R) targets)
    over the N sharer tokens of their contexts."""
    for start in range(0, len(texts), batch_size):
        pairs = [token_pairs(receiver, sharer, text) for text in texts[start:start + batch_size]]
        yield (flat_features(token_kv(sharer, [p[1] for p in pairs], [p[2] for p in pairs])),
               flat_features(token_kv(receiver, [p[0] for p in pairs], [p[3] for p in pairs])))


# ------------------------------------------------------------------------------------------------ fitting
class TranslatorFit:
    """Streamed ridge regression for every map of a ``ContextTranslator``.

    ``add`` accumulates X^T X, X^T Y and sums in float64 (training texts) or keeps the tokens (held-out texts);
    ``solve`` picks each layer's K and V ridge strength on the held-out tokens and writes the maps."""

    def __init__(self, translator: ContextTranslator):
        self.translator = translator
        self.windows = sorted({tuple(s) for s in translator.sources})
        self.count = 0
        self.xx = {w: None for w in self.windows}  # (D, D)
        self.x_sum = {w: None for w in self.windows}  # (D,)
        self.xy = [None] * len(translator.sources)  # per receiver layer (D, O)
        self.y_sum = [None] * len(translator.sources)  # (O,)
        self.held_x: list[list[torch.Tensor]] = []  # per batch, per sharer layer
        self.held_y: list[list[torch.Tensor]] = []

    def add(self, sharer_features: list[torch.Tensor], receiver_targets: list[torch.Tensor], held_out: bool = False):
        if held_out:
            self.held_x.append(sharer_features)
            self.held_y.append(receiver_targets)
            return
        self.count += sharer_features[0].shape[0]
        inputs = {w: torch.cat([sharer_features[s] for s in w], dim=1) for w in self.windows}  # (N, D)
        for w, x in inputs.items():
            self.xx[w] = _accumulate(self.xx[w], x.T @ x)
            self.x_sum[w] = _accumulate(self.x_sum[w], x.sum(0))
        for layer, sources in enumerate(self.translator.sources):
            x = inputs[tuple(sources)]
            self.xy[layer] = _accumulate(self.xy[layer], x.T @ receiver_targets[layer])
            self.y_sum[layer] = _accumulate(self.y_sum[layer], receiver_targets[layer].sum(0))

    @torch.no_grad()
    def solve(self) -> dict:
        """Fit every map; returns per layer the chosen strengths and held-out R^2 of K and V."""
        if self.count < 2:
            raise ValueError("the translator saw fewer than 2 training tokens; give it more text")
        if not self.held_x:
            raise ValueError("the translator has no held-out texts to choose its ridge strength on")
        n = self.count
        translator = self.translator
        half = translator.maps[0].weight.shape[0] // 2
        report = {"tokens": n, "held_out_tokens": sum(x[0].shape[0] for x in self.held_x), "layers": []}
        held_inputs = {w: torch.cat([torch.cat([b[s] for s in w], 1) for b in self.held_x]).double()
                       for w in self.windows}
        for layer, sources in enumerate(translator.sources):
            w = tuple(sources)
            mean = self.x_sum[w] / n
            variance = (torch.diagonal(self.xx[w]) / n - mean ** 2).clamp(min=0)
            scale = neutral_constant_inputs(variance.sqrt() + 1e-6)
            covariance = (self.xx[w] / n - torch.outer(mean, mean)) / torch.outer(scale, scale)
            y_mean = self.y_sum[layer] / n
            cross = (self.xy[layer] / n - torch.outer(mean, y_mean)) / scale[:, None]  # (D, O)
            x_held = (held_inputs[w] - mean) / scale
            y_held = torch.cat([b[layer] for b in self.held_y]).double()
            best = {}
            eye = torch.eye(covariance.shape[0], dtype=covariance.dtype)
            for strength in translator.config.ridge:
                solution = torch.linalg.solve(covariance + strength * eye, cross)  # (D, O)
                error = (x_held @ solution + y_mean - y_held) ** 2
                for slot, columns in (("k", slice(0, half)), ("v", slice(half, None))):
                    sse = float(error[:, columns].sum())
                    if slot not in best or sse < best[slot][0]:
                        best[slot] = (sse, strength, solution[:, columns])
            weight = torch.cat([best["k"][2], best["v"][2]], dim=1)  # (D, O)
            translator.maps[layer].weight.copy_(weight.T.float())
            translator.input_mean[layer] = mean.float()
            translator.input_scale[layer] = scale.float()
            translator.output_mean[layer] = y_mean.float()
            total = ((y_held - y_held.mean(0)) ** 2)
            r2 = {slot: round(1 - best[slot][0] / max(float(total[:, cols].sum()), 1e-12), 4)
                  for slot, cols in (("k", slice(0, half)), ("v", slice(half, None)))}
            report["layers"].append({"sources": sources, "ridge_k": best["k"][1], "ridge_v": best["v"][1],
                                     "r2_k": r2["k"], "r2_v": r2["v"]})
        return report


def _accumulate(total: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    value = value.double()
    return value if total is None else total + value
