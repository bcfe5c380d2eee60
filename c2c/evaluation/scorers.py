"""Scorers and scoring protocols. A *scorer* turns a prompt into a prefilled receiver state (ids + cache of all
prompt tokens but the last); the protocols (generate, letter, cloze, cloze-options, free) run on that state the
same way for every method. The receiver baseline is the pair with fusion off (``PairScorer(fuse=False)``): it and
C2C differ by that one switch. ``ModelScorer`` is a model that is not the pair's receiver (the sharer, a LoRA
receiver) through the same passes (``runtime.passes``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from transformers import DynamicCache

from ..core import cache as kvcache
from ..core.models import LoadedModel
from ..core.rotary import Rotary
from ..core.tensors import pad_rows
from ..data import MCItem, cloze_continuations, extract_choice_letter, free_prompt, mc_prompt
from ..inputs.align import Prompt, as_messages, render
from ..inputs.context import context_span, cut_context, with_context
from ..model.pair import C2CModel
from ..runtime.passes import continuation_logprobs, decode, next_token_logits, per_character, prompt_cache
from .answers import extract_answer, free_text_scores


@dataclass
class Prefilled:
    """A prompt run through a model up to (not including) its last token."""

    model: torch.nn.Module
    tokenizer: object
    input_ids: torch.Tensor  # (B, P): one prompt, or (``prefill_batch``) B left-padded prompts
    cache: DynamicCache  # P - 1 positions
    attention_mask: torch.Tensor | None = None  # (B, P); None: every column is a token (a single prompt)

    @property
    def mask(self) -> torch.Tensor:
        return self.attention_mask if self.attention_mask is not None else torch.ones_like(self.input_ids)


class Scorer(Protocol):
    name: str

    def prefill(self, prompt: str, other_prompt: str | None = None, context: str | None = None) -> Prefilled: ...


BATCHED_SCORINGS = ("cloze", "cloze-options")  # the protocols ``score_items`` runs on several prompts at once


@dataclass
class ModelScorer:
    """A model alone (the sharer, a LoRA receiver), reading the prompt through its own chat template (if ``chat``
    and it has one), with ``context`` as text ahead of the question when given."""

    name: str
    model: LoadedModel
    chat: bool

    def prefill(self, prompt: str, other_prompt: str | None = None, context: str | None = None) -> Prefilled:
        return self.prefill_batch([prompt], [other_prompt], [context])

    @torch.no_grad()
    def prefill_batch(self, prompts: list[str], other_prompts: list[str | None],
                      contexts: list[str | None]) -> Prefilled:
        """``prefill`` of several prompts in one left-padded batch (per-row mask and positions)."""
        rows = [render(self.model.tokenizer, with_context(p, c) if c else as_messages(p), self.chat).ids
                for p, c in zip(prompts, contexts)]
        device = self.model.model.device
        pad = self.model.tokenizer.pad_token_id or 0
        ids = pad_rows(rows, pad, left=True).to(device)
        mask = pad_rows([[1] * len(row) for row in rows], 0, left=True).to(device)
        cache = prompt_cache(self.model.model, ids, mask)
        return Prefilled(self.model.model, self.model.tokenizer, ids, cache, mask)


@dataclass
class EnrichedScorer:
    """The cache-enrichment oracle: the receiver prefills context + question, then the context's positions are
    dropped and the question's keys re-rotated to the positions they would have without it."""

    name: str
    model: LoadedModel
    chat: bool

    @torch.no_grad()
    def prefill(self, prompt: str, other_prompt: str | None = None, context: str | None = None) -> Prefilled:
        if not context:
            raise ValueError("receiver-enriched needs items with a context")
        messages = with_context(prompt, context)
        view = render(self.model.tokenizer, messages, self.chat)
        cut = cut_context(view, context_span(view, messages, context))
        device = self.model.model.device
        ids = torch.tensor([view.ids], device=device)
        cache = prompt_cache(self.model.model, ids, torch.ones_like(ids))
        kept = torch.tensor((cut.prefix + cut.suffix)[:-1], device=device)  # cached positions kept (the last is not)
        new = torch.arange(len(kept), device=device)[None]
        rotary = Rotary(self.model.model)
        layers = [(rotary.move(k[:, :, kept], layer, kept[None], new), v[:, :, kept])
                  for layer, (k, v) in enumerate(kvcache.all_kv(cache))]
        kept_ids = torch.tensor([[view.ids[i] for i in cut.prefix + cut.suffix]], device=device)
        return Prefilled(self.model.model, self.model.tokenizer, kept_ids, kvcache.cache_from_kv(layers))


@dataclass
class PairScorer:
    """The pair's receiver: reading a fused cache, or with ``fuse=False`` the receiver alone (the baseline).

    Fusing, ``other_prompt`` makes the sharer read another question and ``context`` gives the sharer a context
    through ``channel`` (None: every channel the pair has). With fusion off no sharer reads anything, so
    ``other_prompt`` and ``context`` are not read, as in ``C2CModel.generate``: the receiver answers exactly as
    alone. (For the receiver reading a context, the context goes in the prompt: ``context.with_context``.)"""

    name: str
    pair: C2CModel
    channel: str | None = None
    fuse: bool = True

    def prefill(self, prompt: Prompt, other_prompt: str | None = None, context: str | None = None) -> Prefilled:
        return self.prefill_batch([prompt], [other_prompt], [context])

    @torch.no_grad()
    def prefill_batch(self, prompts: list[Prompt], other_prompts: list[str | None],
                      contexts: list[str | None]) -> Prefilled:
        """``prefill`` of several prompts in one batch, laid out by ``C2CModel.prepare`` (left padding, per-row
        alignment and translated sections); a row without ``other_prompt`` has its sharer read its own prompt."""
        if self.fuse:
            sharer_prompts = [o or p for p, o in zip(prompts, other_prompts)] if any(other_prompts) else None
            batch = self.pair.prepare(prompts, sharer_prompts=sharer_prompts,
                                      sharer_contexts=list(contexts) if any(contexts) else None,
                                      context_channel=self.channel)
        else:
            batch = self.pair.prepare(prompts)
        batch = batch.to(self.pair.device)
        cache = self.pair.prefill(batch, fuse=self.fuse)
        columns = slice(0, batch.prompt_length)
        return Prefilled(self.pair.receiver.model, self.pair.receiver.tokenizer, batch.input_ids[:, columns], cache,
                         batch.attention_mask[:, columns])


# ------------------------------------------------------------------------------------------------ protocols
@torch.no_grad()
def state_continuations(state: Prefilled, continuations: list[str]) -> list[tuple[float, int]]:
    """(sum of log-probabilities, token count) of each continuation after the prompt, in one batch."""
    sums, counts = continuation_logprobs(state.model, state.tokenizer, state.input_ids,
                                                 torch.ones_like(state.input_ids), state.cache, [continuations])
    return [(float(total), int(count)) for total, count in zip(sums, counts)]


@torch.no_grad()
def score_items(state: Prefilled, items: list[MCItem], scoring: str) -> list[dict]:
    """``score_item`` of the B items whose prompts ``state`` holds (``prefill_batch``), every choice of every
    item in one forward; cloze protocols only (``BATCHED_SCORINGS``)."""
    if scoring not in BATCHED_SCORINGS:
        raise ValueError(f"scoring {scoring!r} scores one item at a time; batched: {BATCHED_SCORINGS}")
    continuations = [cloze_continuations(item) for item in items]
    sums, _ = continuation_logprobs(state.model, state.tokenizer, state.input_ids, state.mask, state.cache,
                                    continuations)
    results = []
    for row in per_character(sums.double(), continuations):  # float64: the records' scores as Python divides them
        scores = row.tolist()
        results.append({"prediction": max(range(len(scores)), key=scores.__getitem__), "scores": scores,
                        "generated_tokens": 0})
    return results


@torch.no_grad()
def greedy_text(state: Prefilled, max_new_tokens: int) -> tuple[str, int]:
    """Greedy continuation from the prefilled cache; (text, new tokens)."""
    new = decode(state.model, state.tokenizer, state.input_ids, torch.ones_like(state.input_ids),
                         kvcache.repeat_rows(state.cache, 1), max_new_tokens, do_sample=False)[0]
    return state.tokenizer.decode(new, skip_special_tokens=True), len(new)


def score_item(state: Prefilled, item: MCItem, scoring: str, max_new_tokens: int) -> dict:
    """Prediction and per-choice scores of one prefilled item under a protocol. Under ``free`` the prediction is
    the short answer read from the generated text, scored against the item's references (``evaluation.answers``);
    ``correct`` is then the generation score where the item has rivals (synthetic), else exact match."""
    if scoring == "free":
        text, generated = greedy_text(state, max_new_tokens)
        answer = extract_answer(text, item.question)
        scores = free_text_scores(answer, item.gold_answers, item.rivals)
        return {"prediction": answer, "text": text, "generated_tokens": generated, "scores": None,
                "gold": item.gold_answers, "correct": scores.get("generation", scores["exact_match"]), **scores}
    if scoring == "generate":
        text, generated = greedy_text(state, max_new_tokens)
        return {"prediction": extract_choice_letter(text, len(item.choices)), "text": text,
                "generated_tokens": generated, "scores": None}
    if scoring != "letter":  # cloze protocols: log-likelihood per character of each choice, as lm-eval's acc_norm
        return score_items(state, [item], scoring)[0]
    with torch.no_grad():
        logits = next_token_logits(state.model, state.input_ids, state.cache)
    ids = [state.tokenizer(f" {letter}", add_special_tokens=False)["input_ids"][0] for letter in item.letters]
    scores = torch.log_softmax(logits, -1)[ids].tolist()
    return {"prediction": max(range(len(scores)), key=scores.__getitem__), "scores": scores,
            "generated_tokens": 0}


def item_prompt(item: MCItem, scoring: str) -> str:
    if scoring == "free":
        return free_prompt(item)
    return mc_prompt(item, {"generate": "generate", "letter": "cloze-options", "cloze": "cloze",
                            "cloze-options": "cloze-options"}[scoring])


