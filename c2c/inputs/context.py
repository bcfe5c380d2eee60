"""A context that only the sharer reads: how it is written into prompts, and where its tokens are.

Every method that sees a context sees it the same way: ``Context: {context}\\n`` ahead of the last user
message's text. ``receiver-with-context`` (the ceiling) reads that text itself; in the *translated* channel
the receiver reads everything but the context (``Context:`` before it, the question after it) and the
context's positions hold K/V translated from the sharer's reading of ``Context: {context}``; in the *fused
prompt* channel the sharer reads the whole message and its question positions are fused into the receiver's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .align import Message, Rendered, as_messages, render

CONTEXT_HEADER = "Context:"
MAX_CONTEXT_CHARS = 32_000  # longest context file c2c generate and chat read (c2c serve: --max-context-chars); 4,096
# tokens of English take about 18,000 characters


class ContextWarning(UserWarning):
    """A context the pair takes but may not read well (e.g. longer than its translator was fitted on)."""


def check_context(context: str) -> str:
    """The context without surrounding whitespace (a file's last newline is not part of what it says: every
    channel and the benchmarks' contexts read the text stripped); a ValueError when nothing is left."""
    if not isinstance(context, str) or not context.strip():
        raise ValueError(f"the sharer context is empty ({context!r}); give the text the sharer should read, "
                         "or no context at all")
    return context.strip()


def context_block(context: str) -> str:
    """What the sharer reads in the translated channel, and what precedes the question for the others."""
    return f"{CONTEXT_HEADER} {check_context(context)}"


def question_start(context: str) -> int:
    """Where the question starts in a message that ``with_context`` wrote."""
    return len(context_block(context)) + 1


def with_context(prompt: str | list[Message], context: str) -> list[Message]:
    """The prompt with ``Context: {context}\\n`` ahead of its last user message's text."""
    messages = [dict(m) for m in as_messages(prompt)]
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise ValueError("a sharer context goes into a user message, and this prompt has none")
    last = messages[users[-1]]
    last["content"] = f"{context_block(context)}\n{last['content']}"
    return messages


def last_user_message(messages: list[Message]) -> int:
    return max(i for i, m in enumerate(messages) if m.get("role") == "user")


def context_span(view: Rendered, messages: list[Message], context: str) -> tuple[int, int]:
    """Characters of `` {context}`` (its leading space included) in a rendering of ``with_context(...)``."""
    span = view.spans[last_user_message(messages)]
    expected = " " + check_context(context)
    start = span[0] + len(CONTEXT_HEADER) if span else -1
    if span is None or view.text[start:start + len(expected)] != expected:
        raise ValueError("the chat template rewrites the message text, so the context's place in the prompt cannot "
                         "be found; use chat_template: false for this receiver")
    return start, start + len(expected)


@dataclass
class ContextCut:
    """A rendering with a context cut out: the receiver reads ``prefix`` and ``suffix``, not the context."""

    prefix: list[int]  # receiver token indices read before the context
    suffix: list[int]  # receiver token indices read after it
    dropped: list[int]  # the context's own tokens (the ceiling reads these; the translated channel does not)


def cut_context(view: Rendered, span: tuple[int, int]) -> ContextCut:
    """Split a receiver rendering around the character span of its context. A token that straddles the start
    stays in the prefix; one that starts inside the context is dropped."""
    prefix, suffix, dropped = [], [], []
    for index, (start, end) in enumerate(view.offsets):
        if end <= start:  # special tokens: before or after by their place in the sequence
            (prefix if not suffix and not dropped else suffix).append(index)
        elif start < span[0]:
            prefix.append(index)
        elif start >= span[1]:
            suffix.append(index)
        else:
            dropped.append(index)
    if not dropped or not suffix:
        raise ValueError("the rendered prompt has no context tokens or nothing after the context")
    return ContextCut(prefix, suffix, dropped)


def sharer_context_tokens(view: Rendered) -> list[int]:
    """Indices of the sharer's tokens of the context itself in its reading of ``context_block(...)``: every token
    that ends after the header (special tokens such as BOS excluded)."""
    return [i for i, (start, end) in enumerate(view.offsets) if end > start and end > len(CONTEXT_HEADER)]


def sharer_reading(tokenizer, context: str) -> tuple[Rendered, list[int]]:
    """What a sharer reads in the translated channel: its rendering of ``context_block(context)``, and the indices
    of the context's own tokens in it (``sharer_context_tokens``)."""
    view = render(tokenizer, [{"role": "user", "content": context_block(context)}], chat=False)
    return view, sharer_context_tokens(view)


def context_length(tokenizer, context: str) -> int:
    """How many tokens of the context itself a sharer reads in the translated channel (``sharer_context_tokens``)."""
    return len(sharer_reading(tokenizer, context)[1])


def read_context_file(path: str | Path, max_chars: int | None = None) -> str:
    """The UTF-8 text of a sharer context file of at most ``max_chars`` characters (default ``MAX_CONTEXT_CHARS``);
    a ValueError saying what was given and what to do otherwise. Never reads more than the limit allows, so a
    huge file (or a device such as /dev/zero) is refused at once."""
    limit = MAX_CONTEXT_CHARS if max_chars is None else max_chars
    what = f"the sharer context file {str(path)!r}"
    todo = "give a UTF-8 text file holding what the sharer should read"
    file = Path(path).expanduser()
    if file.is_dir():
        raise ValueError(f"{what} is a folder, not a file; {todo}")
    try:
        with file.open("rb") as handle:
            data = handle.read(4 * limit + 4)  # a character takes at most 4 bytes in UTF-8
            over = len(data) > 4 * limit
    except FileNotFoundError:
        raise ValueError(f"{what} does not exist; {todo}") from None
    except OSError as error:
        raise ValueError(f"{what} cannot be read ({error.strerror or error}); {todo}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        if not (over and error.start >= len(data) - 3):  # else only the cut through the last character
            raise ValueError(f"{what} is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8") \
                from None
        text = data[:error.start].decode("utf-8")
    if over or len(text) > limit:
        size = f"{len(text):,} characters" if not over else f"{file.stat().st_size:,} bytes" if file.is_file() \
            else f"more than {4 * limit:,} bytes"
        raise ValueError(f"{what} holds {size}, over the limit of {limit:,} characters for a sharer context; give a "
                         "shorter text (the part the question needs)")
    if not text.strip():
        raise ValueError(f"{what} is empty; write into it the text the sharer should read")
    return text
