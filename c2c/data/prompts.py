"""Prompts for multiple-choice items, the same in training and evaluation, and the letter read from an answer;
the prompt for a free-text answer."""

from __future__ import annotations

import re

from .rows import LETTERS, MCItem

_GENERATE_TEMPLATE = """Accurately answer the following question:

{question}

Choices:
{choices}

Instructions:
- Carefully read the question and all options.
- Select the single most correct answer.
- Respond ONLY in the following format: "The correct answer is {letters}".
- Do not include any explanations, additional text, or punctuation besides the answer.

The correct answer is"""


# The free-text scoring's prompt, chosen on SQuAD dev articles (results/context_handoff/squad_prompt_choice.md)
FREE_PROMPT = "Answer the question with a short phrase from the context.\nQuestion: {question}\nAnswer:"


def free_prompt(item: MCItem) -> str:
    """User text for a free-text answer (``c2c eval --scoring free``); a context goes ahead of it."""
    return FREE_PROMPT.format(question=item.question)


def _options(item: MCItem) -> str:
    return "".join(f"{letter}. {choice}\n" for letter, choice in zip(item.letters, item.choices))


def mc_prompt(item: MCItem, style: str) -> str:
    """User text for an item: "cloze", "cloze-options", "generate" (the C2C paper's zero-shot prompt) or "free"
    (``free_prompt``: the free-text scoring's, for training on what it asks)."""
    if style == "free":
        return free_prompt(item)
    if style == "cloze":
        return f"Question: {item.question}\nAnswer:"
    if style == "cloze-options":
        return f"Question: {item.question}\n{_options(item)}Answer:"
    if style == "generate":
        return _GENERATE_TEMPLATE.format(
            question=item.question, choices=_options(item).rstrip("\n"), letters="/".join(item.letters)
        )
    raise ValueError(f"unknown prompt style {style!r}; expected cloze, cloze-options, generate or free")


def cloze_continuations(item: MCItem) -> list[str]:
    """The continuations scored by cloze protocols, one per choice."""
    return [" " + choice for choice in item.choices]


def extract_choice_letter(text: str, n_choices: int) -> int | None:
    """0-based choice index named in a generated answer, or None.

    Cascade (as in the C2C evaluation): an explicit "answer is X" / "Answer: X" /
    "Choice: X" / "Option: X" / "答案是 X"; else a stand-alone letter at the end or before
    punctuation; else the last stand-alone letter. Only letters valid for n_choices count;
    lower-case letters only count when bracketed or followed by punctuation/end ("answer: (b)"),
    so that "the answer is a ..." is not read as A.
    """
    valid = LETTERS[:n_choices]
    if not valid:
        return None
    low = valid.lower()
    letter = rf"(?:[(\[]\s*([{valid}{low}])\s*[)\]]|([{valid}])\b|([{low}])(?=\s*(?:[.,;:!?]|$)))"
    explicit = rf"(?i:\b(?:answer|choice|option)\b\s*(?:is\b|[:=])|答案\s*(?:是|为)?\s*[:：]?)[\s*:]*{letter}"
    for pattern in (
        explicit,
        rf"(?<![\w-])([{valid}])(?=\s*[.)\]]?\s*$)",  # "... D" / "D." at the end
        rf"(?<![\w-])([{valid}])(?=[.):,])",  # "C) 42", "B. blue"
    ):
        match = re.search(pattern, text)
        if match:
            return LETTERS.index(next(g for g in match.groups() if g).upper())
    lone = re.findall(rf"(?<![\w-])([{valid}])(?![\w-])", text)
    return LETTERS.index(lone[-1]) if lone else None
