"""The terminal chat (`chat`): each answer streamed by `generate_jobs`, with its context commands."""

from __future__ import annotations

import sys
from typing import Callable, TextIO

from ..inputs.align import Message
from ..inputs.context import read_context_file
from ..model.pair import C2CModel
from .engine import Job, Sampling, generate_jobs

COMMANDS = "/context FILE, /context off, /sharer off, /sharer on, /reset, /quit (or Ctrl-D)"


def chat(pair: C2CModel, *, max_new_tokens: int = 256, do_sample: bool = False, temperature: float = 0.7,
         top_p: float = 0.9, input: TextIO | None = None, output: TextIO | None = None) -> None:
    """A terminal chat; the whole conversation so far is the fused context of each answer, streamed as it comes.

    ``/context FILE`` gives the sharer a text to read ahead of each following message (the receiver never sees
    it as text; ``sharer_contexts``), ``/context off`` drops it, ``/context`` shows it. ``/sharer off`` answers
    with the receiver alone (to compare on the same question; the context is then ignored), ``/sharer on``
    fuses again, ``/reset`` starts a new conversation (the context stays), ``/quit`` or end of input ends.
    Works without a terminal."""
    read, write = input or sys.stdin, output or sys.stdout

    def say(text: str) -> None:
        write.write(text)
        write.flush()

    sharers = ", ".join(s.name for s in pair.sharers)
    say(f"c2c chat: receiver {pair.receiver.name}, sharer {sharers}. Commands: {COMMANDS}\n")
    say(_mode(pair, True))
    messages: list[Message] = []
    fuse = True
    context: str | None = None
    while (line := _read_line(read, say)) is not None:
        text = line.strip()
        if text == "/quit":
            break
        if text == "/reset":
            messages = []
            say("(new conversation)\n")
        elif text in ("/sharer off", "/sharer on"):
            fuse = text == "/sharer on"
            say(_mode(pair, fuse))
        elif text == "/context" or text.startswith("/context "):
            context = _context_command(pair, text[len("/context"):].strip(), context, fuse, say)
        elif text.startswith("/"):
            say(f"unknown command {text!r}; commands: {COMMANDS}\n")
        elif text:
            turn = messages + [{"role": "user", "content": text}]
            sampling = Sampling.of(temperature if do_sample else 0.0, top_p, fuse)
            answer = _reply(pair, turn, sampling, max_new_tokens, say, "c2c> " if fuse else "receiver> ",
                            context if fuse else None)
            if answer is not None:
                messages = turn + [{"role": "assistant", "content": answer}]
    say("bye\n")


def _context_command(pair: C2CModel, argument: str, context: str | None, fuse: bool,
                     say: Callable[[str], None]) -> str | None:
    """``/context FILE|off`` (or nothing: show it); returns the context of the following turns."""
    if argument == "off":
        say("(sharer context off: the sharer reads the conversation only)\n" if context else
            "(no sharer context was set)\n")
        return None
    if not argument:
        say(f"(sharer context: {len(context)} characters; /context off drops it)\n" if context else
            "(no sharer context; /context FILE gives the sharer a text to read)\n")
        return context
    try:
        text = read_context_file(argument)
        # the context's own limits (the translator's max_context_tokens, the receiver's positions) up front
        pair.prepare([[{"role": "user", "content": "?"}]], sharer_contexts=[text])
    except ValueError as error:
        say(f"error: {error}; the sharer context is {'unchanged' if context else 'still off'}\n")
        return context
    note = "" if fuse else " (ignored while the sharer is off; /sharer on fuses again)"
    say(f"(sharer context: {argument}, {len(text)} characters; the sharer reads it ahead of each of your next "
        f"messages, the receiver never sees its text; /context off drops it){note}\n")
    return text


def _mode(pair: C2CModel, fuse: bool) -> str:
    if fuse:
        return f"sharer on: {pair.receiver.name} answers from its cache fused with the sharer's\n"
    return f"sharer off: {pair.receiver.name} answers alone, without fusion\n"


def _read_line(read: TextIO, say: Callable[[str], None]) -> str | None:
    """The next line typed, or None at end of input or Ctrl-C."""
    say("you> ")
    try:
        line = read.readline()
    except KeyboardInterrupt:
        line = ""
    if not line:
        say("\n")
        return None
    return line


def _reply(pair: C2CModel, messages: list[Message], sampling: Sampling, max_new_tokens: int,
           say: Callable[[str], None], label: str, context: str | None = None) -> str | None:
    """Stream one answer; None when it failed (the error is shown) or Ctrl-C stopped it."""
    parts: list[str] = []
    errors: list[object] = []

    def post(kind: str, value: object) -> None:
        if kind == "delta":
            parts.append(value)
            say(value)
        elif kind == "error":
            errors.append(value)

    say(label)
    try:
        generate_jobs(pair, [Job(messages, max_new_tokens, sampling, post, context=context)])
    except KeyboardInterrupt:
        say(" [stopped]\n")
        return None
    say("\n")
    if errors:
        hint = "/context off drops the sharer context, " if context else ""
        say(f"error: {errors[0]} ({hint}/reset starts a new conversation)\n")
        return None
    return "".join(parts)

