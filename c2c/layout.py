"""How a batch of prompts with sharer contexts is laid out for the receiver (``C2CModel.prepare``).

Each row is a list of regions, each left-padded to the batch's widest: the receiver's tokens before the
context, one translated section per sharer that translates its context, the receiver's tokens after it. A row
without a translated context has only the last region: the plain prompt, laid out exactly as before.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .align import Prompt, Rendered, TokenAligner, as_messages, render
from .context import (ContextWarning, check_context, context_block, context_span, cut_context, question_start,
                      sharer_context_tokens, with_context)
from .models import LoadedModel


def pad_rows(rows: Sequence[Sequence[int]], value: int, left: bool) -> torch.Tensor:
    """Token rows padded with ``value`` to one width (on the left for prompts that generation continues)."""
    width = max(len(r) for r in rows)
    padded = [([value] * (width - len(r)) + list(r)) if left else (list(r) + [value] * (width - len(r))) for r in rows]
    return torch.tensor(padded, dtype=torch.long)


@dataclass
class TranslatedSection:
    """Receiver columns ``[start, end)`` that hold one sharer's translated context instead of receiver tokens."""

    start: int
    end: int
    sharer_ids: torch.Tensor  # (B, S): the sharer's reading of ``Context: {context}``, left-padded
    sharer_mask: torch.Tensor  # (B, S)
    positions: torch.Tensor  # (B, end - start): the sharer position translated into each column, -1 = none

    def to(self, device: torch.device) -> "TranslatedSection":
        return TranslatedSection(self.start, self.end, self.sharer_ids.to(device), self.sharer_mask.to(device),
                                 self.positions.to(device))


@dataclass
class RowLayout:
    view: Rendered  # the receiver's rendering (with the context's text when a sharer translates it)
    question_start: int | None  # in the last user message: where the question starts after a context, if any
    regions: list[list[int]]  # receiver ids before the context, per sharer its section (-1 each), ids after
    view_columns: dict[int, int]  # view token index -> index among the laid-out entries (dropped tokens absent)
    translated: list[int]  # sharers whose context this row translates
    sharer_reads: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)  # sharer ids, context tokens


def sliding_window(model: LoadedModel) -> int | None:
    config = model.model.config.get_text_config(decoder=True)
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None) or []
    return window if window and ("sliding_attention" in types or getattr(config, "use_sliding_window", False)) else None


def row_contexts(pair, sharer_contexts: Sequence | None, rows: int) -> list[list[str | None]]:
    """Per row, per sharer: the context that sharer reads, or None."""
    if sharer_contexts is None:
        return [[None] * len(pair.sharers) for _ in range(rows)]
    if isinstance(sharer_contexts, str) or len(sharer_contexts) != rows:
        raise ValueError(f"sharer_contexts needs one entry per prompt ({rows}), got "
                         f"{1 if isinstance(sharer_contexts, str) else len(sharer_contexts)}")
    out = []
    for entry in sharer_contexts:
        per_sharer = list(entry) if isinstance(entry, (list, tuple)) else [entry] * len(pair.sharers)
        if len(per_sharer) != len(pair.sharers):
            raise ValueError(f"a row gives {len(per_sharer)} contexts for {len(pair.sharers)} sharers")
        out.append([None if c is None else check_context(c) for c in per_sharer])
    return out


def row_layout(pair, prompt: Prompt, contexts: list[str | None]) -> RowLayout:
    """The receiver's regions for one row: [before context, one section per translating sharer, after]."""
    translating = [j for j, c in enumerate(contexts) if c is not None and pair.translators is not None]
    sections: list[list[int]] = [[] for _ in pair.sharers]
    if not translating:
        view = pair.render_prompt(prompt)
        return RowLayout(view, None, [[], *sections, list(view.ids)], {i: i for i in range(len(view.ids))}, [])
    context = contexts[translating[0]]
    messages = with_context(prompt, context)
    view = render(pair.receiver.tokenizer, messages, pair.config.chat_template)
    cut = cut_context(view, context_span(view, messages, context))
    sharer_reads = {}
    for j in translating:
        sharer_view = render(pair.sharers[j].tokenizer, [{"role": "user", "content": context_block(contexts[j])}],
                             chat=False)
        tokens = sharer_context_tokens(sharer_view)
        if len(tokens) > pair.config.translator.max_context_tokens:
            raise ValueError(f"the context is {len(tokens)} tokens for sharer {pair.sharers[j].name}, over the "
                             f"translator's max_context_tokens={pair.config.translator.max_context_tokens}; "
                             "shorten it or split it")
        fitted = pair.config.sharers[j].fitted_context_tokens
        warned = pair.__dict__.setdefault("_warned_contexts", set())  # once per pair and sharer: a server or a
        if fitted is not None and len(tokens) > fitted and j not in warned:  # chat would repeat it on every turn
            warned.add(j)
            warnings.warn(f"the context is {len(tokens)} tokens for sharer {pair.sharers[j].name}, longer than the "
                          f"longest text its translator was fitted on ({fitted} tokens): the receiver may not read "
                          "it (shorten the context to the part the question needs)", ContextWarning, stacklevel=5)
        sections[j] = [-1] * len(tokens)
        sharer_reads[j] = (sharer_view.ids, tokens)
    regions = [[view.ids[i] for i in cut.prefix], *sections, [view.ids[i] for i in cut.suffix]]
    kept = cut.prefix + [None] * sum(len(s) for s in sections) + cut.suffix
    view_columns = {i: k for k, i in enumerate(kept) if i is not None}
    return RowLayout(view, question_start(context), regions, view_columns, translating, sharer_reads)


def align_row(pair, j: int, aligner: TokenAligner, prompt: Prompt, row: RowLayout, context: str | None):
    """Sharer ``j``'s alignment to the receiver's view of a row (fused-prompt channel)."""
    messages = as_messages(prompt)
    receiver_start = row.question_start
    if context is None and receiver_start is None:
        return aligner.align(messages, row.view, pair.config.chat_template)
    last = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    sharer_messages = with_context(prompt, context) if context is not None else messages
    sharer_start = question_start(context) if context is not None else 0
    offsets_aligner = aligner if aligner.strategy == "offsets" else \
        TokenAligner(aligner.receiver, aligner.sharer, "offsets")
    return offsets_aligner.align(messages, row.view, pair.config.chat_template, sharer_messages,
                                 {last: (receiver_start or 0, sharer_start)})


def translated_section(pair, j: int, rows: list[RowLayout], starts: list[int], widths: list[int]
                       ) -> TranslatedSection | None:
    """Sharer ``j``'s section of the batch: its readings of the rows' contexts and which positions to translate."""
    if widths[1 + j] == 0:
        return None
    # a row without this sharer's context reads one pad token whose K/V nothing uses
    reads = [row.sharer_reads.get(j, ([pair.sharers[j].tokenizer.pad_token_id], [])) for row in rows]
    width = max(len(ids) for ids, _ in reads)
    ids = pad_rows([r for r, _ in reads], pair.sharers[j].tokenizer.pad_token_id, left=True)
    mask = pad_rows([[1] * len(r) for r, _ in reads], 0, left=True)
    positions = pad_rows([[width - len(r) + t for t in tokens] or [-1] for r, tokens in reads], -1, left=True)
    positions = torch.cat([torch.full((len(rows), max(widths[1 + j] - positions.shape[1], 0)), -1), positions], 1)
    return TranslatedSection(starts[1 + j], starts[1 + j] + widths[1 + j], ids, mask, positions)
