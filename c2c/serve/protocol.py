"""The OpenAI protocol: request fields checked into `Options` and prompts, and answers in OpenAI's shapes
(whole or as server-sent events, with usage and log-probabilities).

A ``/v1/completions`` prompt is fused as one user message (the receiver's chat template is applied, as for
chat): fusion is trained on chat-formatted prompts, and a raw-text mode would answer differently from chat.
As in OpenAI's API, ``temperature`` defaults to 1 (sampling); send 0 for greedy answers. A ``seed`` makes a
sampled request repeatable (it then runs as its own batch). ``logprobs`` (and chat's ``top_logprobs``) return
each token's log-probability in OpenAI's shapes, of the distribution it was drawn from (after temperature and
top-p). ``tools`` and ``response_format`` are refused (400), not ignored.

Both endpoints take an optional ``sharer_context`` (a non-empty string of at most ``max_context_chars``
characters): a text only the sharers read, never shown to the receiver as text (``C2CModel.generate``'s
``sharer_contexts``); on ``/v1/completions`` it goes with every prompt of the request. Each job carries its own
context, so requests with different contexts, or none, still run as one batch. With ``"c2c": false`` the
context is ignored and the receiver answers alone.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Callable

from ..inputs.align import Message, Prompt
from .engine import Finish, Sampling, TokenLogprob
from .errors import APIError, error_body

if TYPE_CHECKING:
    from starlette.requests import Request

log = logging.getLogger("c2c.serve")


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int
    max_tokens: int
    default_max_tokens: int
    max_body_bytes: int
    max_context_chars: int = 32000


@dataclass(frozen=True)
class Options:
    """What a request asks for, beyond its prompts."""

    max_tokens: int
    sampling: Sampling
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    context: str | None = None  # the request's sharer_context; None when absent or with "c2c": false


@dataclass(frozen=True)
class Endpoint:
    """How one endpoint reads its prompts and writes its choices; everything else is shared."""

    object: str
    chunk_object: str
    id_prefix: str
    param: str  # the request field holding the prompts
    prompts: Callable[[dict], list[Prompt]]
    top_logprobs: Callable[[dict], int | None]  # the request's log-probability option: None, or top-k
    # (index, text, finish_reason, log-probabilities or None) -> a whole answer's choice, or one streamed chunk's
    choice: Callable[[int, str, str | None, list | None], dict]
    delta: Callable[[int, str, str | None, list | None], dict]


# -------------------------------------------------------------------------------------------- answers
async def stream(events: AsyncIterator, head: dict, endpoint: Endpoint, prompt_tokens: int,
                  include_usage: bool, asked: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``."""
    def chunk(choices: list[dict], **extra) -> str:
        return _sse({**head, "object": endpoint.chunk_object, "choices": choices, **extra})

    completion_tokens = 0
    pending: dict[int, list] = defaultdict(list)  # log-probabilities of the delta that follows them
    async with contextlib.aclosing(events):
        async for index, kind, value in events:
            if kind == "logprobs":
                pending[index] += value
            elif kind == "delta":
                yield chunk([endpoint.delta(index, value, None, pending.pop(index, [] if asked else None))])
            elif kind == "done":
                completion_tokens += value.tokens
                yield chunk([endpoint.delta(index, "", _finish_reason(value), pending.pop(index, [] if asked else None))])
            else:
                log.error("generation failed", exc_info=value)
                yield _sse(error_body(f"generation failed: {value}", "server_error"))
                return
    if include_usage:
        yield chunk([], usage=_usage(prompt_tokens, completion_tokens))
    yield "data: [DONE]\n\n"


async def whole(events: AsyncIterator, head: dict, endpoint: Endpoint, prompt_tokens: int, asked: bool) -> dict:
    """One answer per prompt; with log-probabilities when ``asked``."""
    texts: dict[int, str] = defaultdict(str)
    logprobs: dict[int, list] = {}
    finishes: dict[int, Finish] = {}
    async with contextlib.aclosing(events):
        async for index, kind, value in events:
            if kind == "logprobs":
                logprobs.setdefault(index, []).extend(value)
            elif kind == "delta":
                texts[index] += value
            elif kind == "done":
                finishes[index] = value
            else:
                log.error("generation failed", exc_info=value)
                raise APIError(500, f"generation failed: {value}", "server_error")
    choices = [endpoint.choice(index, texts[index], _finish_reason(finishes[index]),
                               logprobs.get(index, []) if asked else None) for index in sorted(finishes)]
    usage = _usage(prompt_tokens, sum(finish.tokens for finish in finishes.values()))
    return {**head, "object": endpoint.object, "choices": choices, "usage": usage}


def _sse(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _finish_reason(finish: Finish) -> str:
    return "length" if finish.reason == "length" else "stop"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


# -------------------------------------------------------------------------------------------- validation
def authorize(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
        raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' with the key "
                            "this server was started with", code="invalid_api_key")


_REQUIRED = object()


def field(body: dict, name: str, types: tuple[type, ...], expected: str, default: object = _REQUIRED,
           valid: Callable[[object], bool] = lambda value: True) -> object:
    """``body[name]``, or ``default`` when absent or null; a 400 saying what was expected otherwise."""
    value = body.get(name)
    if value is None:
        if default is _REQUIRED:
            raise APIError(400, f"'{name}' is missing: expected {expected}", param=name)
        return default
    is_bool_for_number = isinstance(value, bool) and bool not in types
    if is_bool_for_number or not isinstance(value, types) or not valid(value):
        raise APIError(400, f"'{name}' must be {expected}, got {json.dumps(value)[:80]}", param=name)
    return value


def parse_options(body: dict, limits: Limits) -> Options:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = field(body, name, (int,), f"an integer from 1 to {limits.max_tokens} (this server's limit)",
                        limits.default_max_tokens, lambda v: 1 <= v <= limits.max_tokens)
    temperature = field(body, "temperature", (int, float), "a number from 0 (greedy) to 2", 1.0,
                         lambda v: 0 <= v <= 2)
    top_p = field(body, "top_p", (int, float), "a number above 0 and at most 1", 1.0, lambda v: 0 < v <= 1)
    stop = field(body, "stop", (str, list), "a non-empty string or a list of up to 4 of them", [],
                  lambda v: bool(v) if isinstance(v, str) else len(v) <= 4 and all(isinstance(s, str) and s for s in v))
    stream = field(body, "stream", (bool,), "true or false", False)
    stream_options = field(body, "stream_options", (dict,), 'an object such as {"include_usage": true}', {})
    field(body, "n", (int,), "1 (this server gives one answer per prompt)", 1, lambda v: v == 1)
    fuse = field(body, "c2c", (bool,), "true (fused answer) or false (the receiver alone)", True)
    seed = field(body, "seed", (int,), "an integer (the same seed and request give the same sampled text)", None)
    for name in UNSUPPORTED:
        if body.get(name) is not None:
            raise APIError(400, f"'{name}' is not supported by this server (it answers with text only); leave it out",
                           param=name, code="unsupported_parameter")
    context = _sharer_context(body, limits.max_context_chars)
    return Options(max_tokens, Sampling.of(temperature, top_p, fuse, seed), (stop,) if isinstance(stop, str) else tuple(stop),
                   stream, bool(stream_options.get("include_usage")), context if fuse else None)


UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "response_format")


def _sharer_context(body: dict, limit: int) -> str | None:
    """The request's ``sharer_context``: a non-empty string of at most ``limit`` characters, or None if absent.
    Validated even with ``"c2c": false`` (which then ignores it)."""
    context = field(body, "sharer_context", (str,), "a non-empty string: the text only the sharer reads", None,
                     lambda v: bool(v.strip()))
    if context is not None and len(context) > limit:
        raise APIError(400, f"'sharer_context' is {len(context)} characters, over this server's limit of {limit} "
                            "(its --max-context-chars); shorten it", param="sharer_context",
                       code="sharer_context_too_long")
    return context


ROLES = ("system", "user", "assistant")


def _messages(body: dict) -> list[Prompt]:
    messages = field(body, "messages", (list,), "a non-empty list of messages {role, content}", valid=bool)
    return [[_message(message, f"messages[{index}]") for index, message in enumerate(messages)]]


def _message(message: object, param: str) -> Message:
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise APIError(400, f"{param} must be an object with a role in {ROLES} and a content, got "
                            f"{json.dumps(message)[:80]}", param=param)
    content = message.get("content")
    if isinstance(content, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in content):
        content = "".join(part["text"] for part in content)  # text parts; other parts (images) are refused
    if not isinstance(content, str):
        raise APIError(400, f"{param}.content must be a string or a list of text parts, got "
                            f"{json.dumps(content)[:80]}", param=f"{param}.content")
    return {"role": message["role"], "content": content}


def _prompts(body: dict) -> list[Prompt]:
    prompt = field(body, "prompt", (str, list), "a string or a non-empty list of strings (not token ids)",
                    valid=lambda v: isinstance(v, str) or bool(v) and all(isinstance(p, str) for p in v))
    return [prompt] if isinstance(prompt, str) else list(prompt)


def _chat_logprobs(body: dict) -> int | None:
    asked = field(body, "logprobs", (bool,), "true or false", False)
    top = field(body, "top_logprobs", (int,), "an integer from 0 to 20 (with logprobs: true)", None,
                 lambda v: 0 <= v <= 20)
    if top is not None and not asked:
        raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return (top or 0) if asked else None


def _completion_logprobs(body: dict) -> int | None:
    return field(body, "logprobs", (int,), "an integer from 0 to 5: the alternatives per token", None,
                  lambda v: 0 <= v <= 5)


def _chat_content(entries: list[TokenLogprob] | None) -> dict | None:
    """OpenAI's chat shape: {"content": [{token, logprob, bytes, top_logprobs: [...]}], "refusal": null}."""
    if entries is None:
        return None
    item = lambda token, logprob: {"token": token, "logprob": logprob, "bytes": list(token.encode())}  # noqa: E731
    return {"content": [{**item(e.token, e.logprob), "top_logprobs": [item(t, lp) for t, lp in e.top]}
                        for e in entries], "refusal": None}


def _completion_content(entries: list[TokenLogprob] | None, offset: int = 0) -> dict | None:
    """OpenAI's completions shape: {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}."""
    if entries is None:
        return None
    offsets = [offset + sum(len(e.token) for e in entries[:i]) for i in range(len(entries))]
    return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [dict(e.top) for e in entries], "text_offset": offsets}


CHAT = Endpoint(
    "chat.completion", "chat.completion.chunk", "chatcmpl", "messages", _messages, _chat_logprobs,
    choice=lambda index, text, finish, logprobs: {"index": index, "message": {"role": "assistant", "content": text},
                                                  "finish_reason": finish, "logprobs": _chat_content(logprobs)},
    delta=lambda index, text, finish, logprobs: {
        "index": index, "delta": {"role": "assistant", "content": text} if text else {}, "finish_reason": finish,
        "logprobs": _chat_content(logprobs)})
COMPLETION = Endpoint(
    "text_completion", "text_completion", "cmpl", "prompt", _prompts, _completion_logprobs,
    choice=lambda index, text, finish, logprobs: {"index": index, "text": text, "finish_reason": finish,
                                                  "logprobs": _completion_content(logprobs)},
    delta=lambda index, text, finish, logprobs: {"index": index, "text": text, "finish_reason": finish,
                                                 "logprobs": _completion_content(logprobs)})
