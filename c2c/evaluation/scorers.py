"""Scorers and scoring protocols. A *scorer* turns a prompt into a prefilled receiver state (ids + cache of all
prompt tokens but the last); the protocols (generate, letter, cloze, cloze-options, free) run on that state the
same way for every method. The receiver baseline is the pair with fusion off (``PairScorer(fuse=False)``): it and
C2C differ by that one switch. ``ModelScorer`` is a model that is not the pair's receiver (the sharer, a LoRA
receiver) through the same passes (``runtime.passes``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from ..core import cache as kvcache
from ..core.models import LoadedModel
from ..core.rotary import Rotary
from ..core.tensors import pad_rows, position_ids, row_mask
from ..data import MCItem, cloze_continuations, extract_choice_letter, free_prompt, mc_prompt
from ..inputs.align import Prompt, as_messages, render
from ..inputs.context import context_span, cut_context, with_context
from ..model.pair import C2CModel
from ..runtime.passes import continuation_logprobs, greedy_texts, last_token_logits, per_character, prompt_cache
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


class Scorer:
    """Prefills B prompts in one left-padded batch (``prefill_batch``); ``other_prompts``/``contexts``: per prompt,
    what a sharer reads instead of the prompt / as a context (None: nothing), as each scorer says."""

    name: str

    def prefill_batch(self, prompts: list[Prompt], other_prompts: list[str | None],
                      contexts: list[str | None]) -> Prefilled:
        raise NotImplementedError

    def prefill(self, prompt: Prompt, other_prompt: str | None = None, context: str | None = None) -> Prefilled:
        """One prompt: ``prefill_batch`` of one."""
        return self.prefill_batch([prompt], [other_prompt], [context])


@dataclass
class ModelScorer(Scorer):
    """A model alone (the sharer, a LoRA receiver), reading the prompt through its own chat template (if ``chat``
    and it has one), with ``context`` as text ahead of the question when given."""

    name: str
    model: LoadedModel
    chat: bool

    @torch.no_grad()
    def prefill_batch(self, prompts: list[str], other_prompts: list[str | None],
                      contexts: list[str | None]) -> Prefilled:
        """``prefill`` of several prompts in one left-padded batch (per-row mask and positions)."""
        rows = [render(self.model.tokenizer, with_context(p, c) if c else as_messages(p), self.chat).ids
                for p, c in zip(prompts, contexts)]
        device = self.model.model.device
        pad = self.model.tokenizer.pad_token_id or 0
        ids = pad_rows(rows, pad, left=True).to(device)
        mask = row_mask(rows, left=True).to(device)
        cache = prompt_cache(self.model.model, ids, mask)
        return Prefilled(self.model.model, self.model.tokenizer, ids, cache, mask)


@dataclass
class EnrichedScorer(Scorer):
    """The cache-enrichment oracle: the receiver prefills context + question, then the context's positions are
    dropped and the question's keys re-rotated to the positions they would have without it."""

    name: str
    model: LoadedModel
    chat: bool

    @torch.no_grad()
    def prefill_batch(self, prompts: list[str], other_prompts: list[str | None],
                      contexts: list[str | None]) -> Prefilled:
        """``prefill`` of several prompts: all read with their contexts in one left-padded batch, then each
        row's kept positions gathered, re-rotated and left-padded again."""
        if not all(contexts):
            raise ValueError("receiver-enriched needs items with a context")
        tokenizer, model = self.model.tokenizer, self.model.model
        views, kept = [], []  # each row's tokens with its context, and the indices kept without it
        for prompt, context in zip(prompts, contexts):
            messages = with_context(prompt, context)
            view = render(tokenizer, messages, self.chat)
            cut = cut_context(view, context_span(view, messages, context))
            views.append(view.ids)
            kept.append(cut.prefix + cut.suffix)
        device, pad = model.device, tokenizer.pad_token_id or 0
        ids = pad_rows(views, pad, left=True).to(device)  # (B, P)
        cache = prompt_cache(model, ids, row_mask(views, left=True).to(device))
        # the cached positions kept (a row's last token is not cached), left-padded (B, T); padding is masked
        cached = [row[:-1] for row in kept]
        old = pad_rows(cached, 0, left=True).to(device)  # positions as read with the context
        columns = old + torch.tensor([ids.shape[1] - len(row) for row in views], device=device)[:, None]
        new = position_ids(row_mask(cached, left=True)).to(device)  # positions without it
        rotary = Rotary(model)
        layers = []
        for layer, (k, v) in enumerate(kvcache.all_kv(cache)):
            index = columns[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])  # (B, H, T, d)
            layers.append((rotary.move(k.gather(2, index), layer, old, new), v.gather(2, index)))
        kept_ids = pad_rows([[view[i] for i in row] for view, row in zip(views, kept)], pad, left=True).to(device)
        mask = row_mask(kept, left=True).to(device)
        return Prefilled(model, tokenizer, kept_ids, kvcache.cache_from_kv(layers), mask)


@dataclass
class PairScorer(Scorer):
    """The pair's receiver: reading a fused cache, or with ``fuse=False`` the receiver alone (the baseline).

    Fusing, ``other_prompt`` makes the sharer read another question and ``context`` gives the sharer a context
    through ``channel`` (None: every channel the pair has). With fusion off no sharer reads anything, so
    ``other_prompt`` and ``context`` are not read, as in ``C2CModel.generate``: the receiver answers exactly as
    alone. (For the receiver reading a context, the context goes in the prompt: ``context.with_context``.)"""

    name: str
    pair: C2CModel
    channel: str | None = None
    fuse: bool = True

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
def score_items(state: Prefilled, items: list[MCItem], scoring: str, max_new_tokens: int = 64) -> list[dict]:
    """Prediction and per-choice scores of the B items whose prompts ``state`` holds (one, or ``prefill_batch``)
    under a protocol, all in one batch: every choice of every item in one forward (cloze protocols), every
    prompt's next token (letter), every prompt decoded greedily together (generate, free).

    Under ``free`` the prediction is the short answer read from the generated text, scored against the item's
    references (``evaluation.answers``); ``correct`` is then the generation score where the item has rivals
    (synthetic), else exact match. Cloze protocols score the log-likelihood per character of each choice, as
    lm-eval's acc_norm."""
    if scoring in ("free", "generate"):
        texts = greedy_texts(state.model, state.tokenizer, state.input_ids, state.mask,
                             kvcache.repeat_rows(state.cache, 1), max_new_tokens)
        return [generated_result(item, text, count, scoring) for item, (text, count) in zip(items, texts)]
    if scoring == "letter":
        logprobs = torch.log_softmax(last_token_logits(state.model, state.input_ids, state.mask, state.cache), -1)
        rows = [row[[state.tokenizer(f" {letter}", add_special_tokens=False)["input_ids"][0]
                     for letter in item.letters]].tolist() for row, item in zip(logprobs, items)]  # (B, k_i)
    else:
        continuations = [cloze_continuations(item) for item in items]
        sums, _ = continuation_logprobs(state.model, state.tokenizer, state.input_ids, state.mask, state.cache,
                                        continuations)
        # float64: the records' scores as Python divides them
        rows = [row.tolist() for row in per_character(sums.double(), continuations)]
    return [{"prediction": max(range(len(scores)), key=scores.__getitem__), "scores": scores,
             "generated_tokens": 0} for scores in rows]


def generated_result(item: MCItem, text: str, generated: int, scoring: str) -> dict:
    """A generated answer's record fields: the short answer and its scores (free), or the choice letter read
    from the text (generate)."""
    if scoring == "generate":
        return {"prediction": extract_choice_letter(text, len(item.choices)), "text": text,
                "generated_tokens": generated, "scores": None}
    answer = extract_answer(text, item.question)
    scores = free_text_scores(answer, item.gold_answers, item.rivals)
    return {"prediction": answer, "text": text, "generated_tokens": generated, "scores": None,
            "gold": item.gold_answers, "correct": scores.get("generation", scores["exact_match"]), **scores}


def item_prompt(item: MCItem, scoring: str) -> str:
    if scoring == "free":
        return free_prompt(item)
    return mc_prompt(item, {"generate": "generate", "letter": "cloze-options", "cloze": "cloze",
                            "cloze-options": "cloze-options"}[scoring])


