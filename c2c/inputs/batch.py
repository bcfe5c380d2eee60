"""Batch preparation: prompts (and responses) tokenized for the receiver, laid out in left-padded rows, each
sharer's input and the sharer position fused into each receiver column. ``pair`` is always a ``C2CModel``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..core.models import max_positions, sliding_window
from ..core.tensors import pad_rows, row_mask
from .align import Prompt, Rendered, as_messages, render
from .sections import TranslatedSection, align_row, context_text, row_contexts, row_layout, translated_section


CONTEXT_CHANNELS = (None, "translated", "fused")


@dataclass
class Batch:
    """Left-padded prompts (plus right-padded responses when training or scoring) and their sharer inputs."""

    input_ids: torch.Tensor  # (B, P + R) receiver ids
    attention_mask: torch.Tensor  # (B, P + R)
    prompt_length: int  # P: prompts are left-padded to this width
    sharer_ids: list[torch.Tensor]  # per sharer (B, S_j)
    sharer_mask: list[torch.Tensor]  # per sharer (B, S_j)
    positions: list[torch.Tensor]  # per sharer (B, P): sharer position fused into each receiver position, -1 = none
    labels: torch.Tensor | None = None  # (B, P + R): response ids, -100 elsewhere
    sections: list["TranslatedSection | None"] = field(default_factory=list)  # per sharer: its translated context
    fuse_prompt: bool = True  # False: only the translated channel (the fusers leave the prompt alone)

    def prompt_tokens(self) -> list[int]:
        """Per row, the receiver tokens of its prompt: its real columns less those of translated contexts."""
        counts = self.attention_mask[:, :self.prompt_length].sum(1).tolist()
        for section in self.sections:
            if section is not None:
                counts = [count - tokens for count, tokens in zip(counts, section.tokens)]
        return counts

    def to(self, device: torch.device) -> "Batch":
        move = lambda t: t.to(device) if t is not None else None  # noqa: E731
        return Batch(move(self.input_ids), move(self.attention_mask), self.prompt_length,
                     [move(t) for t in self.sharer_ids], [move(t) for t in self.sharer_mask],
                     [move(t) for t in self.positions], move(self.labels),
                     self.sections, self.fuse_prompt)  # a section's contexts move when they are translated


def render_prompt(pair, prompt: Prompt) -> Rendered:
    return render(pair.receiver.tokenizer, as_messages(prompt), pair.config.chat_template)


def response_ids(pair, prompt: Prompt, response: str, template: bool = True) -> list[int]:
    """Receiver ids of the assistant's response after ``prompt``: its turn end included when ``template``."""
    tokenizer = pair.receiver.tokenizer
    messages = as_messages(prompt)
    text = response
    if template and pair.config.chat_template and tokenizer.chat_template:
        prompt_text = render(tokenizer, messages, True).text
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                             tokenize=False, enable_thinking=False)
        text = full[len(prompt_text):] if full.startswith(prompt_text) else response + (tokenizer.eos_token or "")
    else:
        prompt_text = render(tokenizer, messages, False).text
        if not prompt_text[-1:].isspace() and not response[:1].isspace():
            text = " " + response  # a raw completion: "Answer:" + " Paris"
        if template and tokenizer.eos_token:
            text += tokenizer.eos_token
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def prepare(pair, prompts: Sequence[Prompt], responses: Sequence[str] | None = None,
            sharer_prompts: Sequence[Prompt] | None = None, max_new_tokens: int = 0,
            response_template: bool = True, sharer_contexts: Sequence | None = None,
            context_channel: str | None = None) -> Batch:
    """Tokenize and align a batch. ``sharer_prompts`` makes the sharers read other prompts (the shuffled
    control): their fused positions are spread in order over the receiver's fused positions.

    ``sharer_contexts`` gives each row a context that only the sharers read (None, one text for every
    sharer, or a list with one text or None per sharer). A sharer with a translator has it translated into
    receiver positions where the context's text would stand; a sharer with fusers reads it ahead of the
    question, whose positions are fused as usual. ``context_channel`` ("translated" or "fused") uses only
    that channel (with "translated", the prompt is not fused). Rows are laid out as regions (receiver tokens
    before the context, one translated section per translating sharer, receiver tokens after), each
    left-padded."""
    if not prompts:
        raise ValueError("no prompts given")
    if context_channel not in CONTEXT_CHANNELS:
        raise ValueError(f"context_channel {context_channel!r} is unknown; expected one of {CONTEXT_CHANNELS}")
    none = row_contexts(pair, None, len(prompts))
    contexts = row_contexts(pair, sharer_contexts, len(prompts))
    translating = none if context_channel == "fused" else contexts
    if context_channel == "translated":
        contexts = none  # no sharer reads the context ahead of the question
    rows = [row_layout(pair, prompt, per_sharer) for prompt, per_sharer in zip(prompts, translating)]
    widths = [max(len(row.regions[r]) for row in rows) for r in range(len(rows[0].regions))]
    starts = [sum(widths[:r]) for r in range(len(widths))]
    limit = max_positions(pair.receiver)
    window = sliding_window(pair.receiver)
    for row in rows:
        length = sum(len(region) for region in row.regions)
        if length + max_new_tokens > limit:
            raise ValueError(f"prompt of {length} positions + {max_new_tokens} new tokens exceeds the "
                             f"receiver's {limit} positions; shorten the prompt (or context) or lower max_new_tokens")
        if window is not None and row.translated and length > window:
            raise ValueError(f"the translated context and prompt take {length} positions, more than the "
                             f"receiver's sliding window of {window}: its sliding layers would not see the start "
                             "of the context. Shorten the context")
    columns = [[starts[r] + widths[r] - len(region) + k for r, region in enumerate(row.regions)
                for k in range(len(region))] for row in rows]  # per row: the column of each laid-out entry
    pad = pair.receiver.tokenizer.pad_token_id
    input_ids = torch.full((len(rows), sum(widths)), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for index, (row, cols) in enumerate(zip(rows, columns)):
        flat = [token for region in row.regions for token in region]
        input_ids[index, cols] = torch.tensor([pad if token < 0 else token for token in flat], dtype=torch.long)
        attention_mask[index, cols] = 1
    sharer_ids, sharer_mask, positions, sections = [], [], [], []
    for j, (sharer, aligner) in enumerate(zip(pair.sharers, pair.aligners)):
        sharer_rows, maps = [], []
        for index, (prompt, row) in enumerate(zip(prompts, rows)):
            alignment = align_row(pair, j, aligner, prompt, row, context_text(contexts[index][j]))
            if sharer_prompts is not None:
                other = sharer_prompts[index]
                other_alignment = aligner.align(as_messages(other), render_prompt(pair, other),
                                                pair.config.chat_template)
                alignment.sharer_ids = other_alignment.sharer_ids
                alignment.positions = spread_positions(alignment.positions, other_alignment.positions)
            if len(alignment.sharer_ids) > max_positions(sharer):
                raise ValueError(f"prompt is {len(alignment.sharer_ids)} tokens for sharer {sharer.name}, over "
                                 f"its {max_positions(sharer)} positions; shorten the prompt")
            sharer_rows.append(alignment.sharer_ids)
            column_map = [-1] * input_ids.shape[1]
            for view_index, sharer_position in enumerate(alignment.positions):
                column = row.view_columns.get(view_index)
                if sharer_position >= 0 and column is not None:
                    column_map[columns[index][column]] = sharer_position
            maps.append(column_map)
        width = max(len(r) for r in sharer_rows)
        # Left padding shifts each sharer row right; shift the positions that point into it.
        maps = [[p + width - len(r) if p >= 0 else -1 for p in m] for m, r in zip(maps, sharer_rows)]
        sharer_ids.append(pad_rows(sharer_rows, sharer.tokenizer.pad_token_id, left=True))
        sharer_mask.append(row_mask(sharer_rows, left=True))
        positions.append(torch.tensor(maps, dtype=torch.long))
        sections.append(translated_section(rows, j, starts, widths))
    prompt_length = input_ids.shape[1]
    labels = None
    if responses is not None:
        responses_ids = [response_ids(pair, p, r, response_template) for p, r in zip(prompts, responses)]
        input_ids = torch.cat([input_ids, pad_rows(responses_ids, pad, left=False)], dim=1)
        attention_mask = torch.cat([attention_mask, row_mask(responses_ids, left=False)], 1)
        labels = torch.cat([torch.full((len(prompts), prompt_length), -100),
                            pad_rows(responses_ids, -100, left=False)], dim=1)
    return Batch(input_ids, attention_mask, prompt_length, sharer_ids, sharer_mask, positions, labels,
                 sections=sections, fuse_prompt=context_channel != "translated")


def spread_positions(own: list[int], other: list[int]) -> list[int]:
    """Give the fused positions of ``own`` the fused sharer positions of ``other``, spread in order."""
    targets = [i for i, p in enumerate(own) if p >= 0]
    sources = [p for p in other if p >= 0]
    spread = [-1] * len(own)
    if sources:
        for k, index in enumerate(targets):
            spread[index] = sources[k * len(sources) // len(targets)]
    return spread
