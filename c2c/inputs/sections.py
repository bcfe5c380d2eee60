"""How a batch of prompts with sharer contexts is laid out for the receiver (``C2CModel.prepare``).

Each row is a list of regions, each left-padded to the batch's widest: the receiver's tokens before the
context, one translated section per sharer that translates its context, the receiver's tokens after it. A row
without a translated context has only the last region: the plain prompt, laid out exactly as before.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Sequence

from ..core.models import max_positions
from .align import OFFSET_ALIGNMENTS, Prompt, Rendered, TokenAligner, as_messages, render
from .context import (ContextWarning, check_context, context_span, cut_context, question_start, sharer_reading,
                      with_context)
from .translated_context import TranslatedContext


@dataclass
class TranslatedSection:
    """Receiver columns ``[start, end)`` that hold one sharer's translated context instead of receiver tokens: row
    b's context fills the last ``tokens[b]`` of them (left padding before it, as every region)."""

    start: int
    end: int
    contexts: list[str | TranslatedContext | None]  # per row: the text to read, an already read context, or none
    tokens: list[int]  # per row: the context's translated positions (0: none)


@dataclass
class RowLayout:
    view: Rendered  # the receiver's rendering (with the context's text when a sharer translates it)
    question_start: int | None  # in the last user message: where the question starts after a context, if any
    regions: list[list[int]]  # receiver ids before the context, per sharer its section (-1 each), ids after
    view_columns: dict[int, int]  # view token index -> index among the laid-out entries (dropped tokens absent)
    translated: list[int]  # sharers whose context this row translates
    contexts: dict[int, str | TranslatedContext] = field(default_factory=dict)  # per translating sharer
    tokens: dict[int, int] = field(default_factory=dict)  # per translating sharer: its context's positions


def context_text(context: str | TranslatedContext | None) -> str | None:
    return context.text if isinstance(context, TranslatedContext) else context


def row_contexts(pair, sharer_contexts: Sequence | None, rows: int) -> list[list[str | TranslatedContext | None]]:
    """Per row, per sharer: the context that sharer reads (a text, or one it already read), or None."""
    if sharer_contexts is None:
        return [[None] * len(pair.sharers) for _ in range(rows)]
    if isinstance(sharer_contexts, (str, TranslatedContext)) or len(sharer_contexts) != rows:
        raise ValueError(f"sharer_contexts needs one entry per prompt ({rows}), got "
                         f"{1 if isinstance(sharer_contexts, (str, TranslatedContext)) else len(sharer_contexts)}")
    out = []
    for entry in sharer_contexts:
        per_sharer = list(entry) if isinstance(entry, (list, tuple)) else [entry] * len(pair.sharers)
        if len(per_sharer) != len(pair.sharers):
            raise ValueError(f"a row gives {len(per_sharer)} contexts for {len(pair.sharers)} sharers")
        if pair.translators is None and any(isinstance(c, TranslatedContext) for c in per_sharer):
            raise ValueError("a translated context was given to a pair without a context translator; give its text "
                             "(context.text) instead")
        out.append([c if c is None or isinstance(c, TranslatedContext) else check_context(c) for c in per_sharer])
    return out


def row_layout(pair, prompt: Prompt, contexts: list[str | TranslatedContext | None]) -> RowLayout:
    """The receiver's regions for one row: [before context, one section per translating sharer, after]."""
    translating = [j for j, c in enumerate(contexts) if c is not None and pair.translators is not None]
    sections: list[list[int]] = [[] for _ in pair.sharers]
    if not translating:
        view = pair.render_prompt(prompt)
        return RowLayout(view, None, [[], *sections, list(view.ids)], {i: i for i in range(len(view.ids))}, [])
    context = context_text(contexts[translating[0]])
    messages = with_context(prompt, context)
    view = render(pair.receiver.tokenizer, messages, pair.config.chat_template)
    cut = cut_context(view, context_span(view, messages, context))
    tokens = {j: context_tokens(pair, j, contexts[j]) for j in translating}
    for j in translating:
        sections[j] = [-1] * tokens[j]
    regions = [[view.ids[i] for i in cut.prefix], *sections, [view.ids[i] for i in cut.suffix]]
    kept = cut.prefix + [None] * sum(len(s) for s in sections) + cut.suffix
    view_columns = {i: k for k, i in enumerate(kept) if i is not None}
    return RowLayout(view, question_start(context), regions, view_columns, translating,
                     {j: contexts[j] for j in translating}, tokens)


def context_tokens(pair, j: int, context: str | TranslatedContext) -> int:
    """How many positions sharer ``j``'s translation of ``context`` takes, after checking that the models take
    it (and, for a context read before, that this pair read it)."""
    sharer = pair.sharers[j]
    if isinstance(context, TranslatedContext):
        context.check(pair.context_identity(j))
        count = context.tokens
    else:
        view, tokens = sharer_reading(sharer.tokenizer, context)
        if len(view.ids) > max_positions(sharer):
            raise ValueError(f"the context is {len(view.ids)} tokens for sharer {sharer.name}, over the "
                             f"{max_positions(sharer)} positions it takes; shorten it or split it")
        count = len(tokens)
    limit = pair.config.translator.max_context_tokens
    if limit is not None and count > limit:
        raise ValueError(f"the context is {count} tokens for sharer {sharer.name}, over the translator's "
                         f"max_context_tokens={limit}; shorten it or split it")
    fitted = pair.config.sharers[j].fitted_context_tokens
    warned = pair.__dict__.setdefault("_warned_contexts", set())  # once per pair and sharer: a server or a
    if fitted is not None and count > fitted and j not in warned:  # chat would repeat it on every turn
        warned.add(j)
        warnings.warn(f"the context is {count} tokens for sharer {sharer.name}, longer than the longest text its "
                      f"translator was fitted on ({fitted} tokens): the receiver may not read it (shorten the "
                      "context to the part the question needs)", ContextWarning, stacklevel=6)
    return count


def align_row(pair, j: int, aligner: TokenAligner, prompt: Prompt, row: RowLayout, context: str | None):
    """Sharer ``j``'s alignment to the receiver's view of a row (fused-prompt channel)."""
    messages = as_messages(prompt)
    receiver_start = row.question_start
    if context is None and receiver_start is None:
        return aligner.align(messages, row.view, pair.config.chat_template)
    last = max(i for i, m in enumerate(messages) if m.get("role") == "user")
    sharer_messages = with_context(prompt, context) if context is not None else messages
    sharer_start = question_start(context) if context is not None else 0
    offsets_aligner = aligner if aligner.strategy in OFFSET_ALIGNMENTS else \
        TokenAligner(aligner.receiver, aligner.sharer, "offsets")
    return offsets_aligner.align(messages, row.view, pair.config.chat_template, sharer_messages,
                                 {last: (receiver_start or 0, sharer_start)})


def translated_section(rows: list[RowLayout], j: int, starts: list[int], widths: list[int]
                       ) -> TranslatedSection | None:
    """Sharer ``j``'s section of the batch: which context each row translates there."""
    if widths[1 + j] == 0:
        return None
    return TranslatedSection(starts[1 + j], starts[1 + j] + widths[1 + j], [row.contexts.get(j) for row in rows],
                             [row.tokens.get(j, 0) for row in rows])
