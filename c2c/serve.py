"""Talk to a C2C pair: a terminal chat (`chat`) and an OpenAI-compatible HTTP server (`create_app`, `serve`).

Both share one core, `generate_jobs`: it runs prompts as one `pair.generate` batch with a `Rows` stopping
criterion, which ``generate`` calls after every decoding step. `Rows` turns each row's new token into a text
delta for that row's listener and ends the row on its own terms: its ``max_tokens``, its end-of-sequence, one
of its stop sequences (trimmed from the answer, as OpenAI does) or its cancel flag. So the rows of one batch
may ask for different lengths, and each answer is delivered the moment its row ends.

Server: a handler validates a request, turns each of its prompts into a `Job` and submits them to the
`Engine`, a bounded queue drained by the one thread that runs the model (torch must not run one model from
several threads at once). The engine takes the oldest waiting job plus the waiting jobs with the same
`Sampling` (all greedy requests share one), waiting up to ``batch_window_ms`` for more when it was idle, up to
``max_batch``. The engine's thread is also the only one that tokenizes (fast tokenizers are not safe across threads):
it prepares each batch once and answers each job "accepted" or refused (a 400) before its first token; the
handler waits for that word, then reads its jobs' events from an asyncio queue and either streams them as
server-sent events or joins them into one answer; a client that disconnects sets its jobs' cancel flags.

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

import asyncio
import contextlib
import hmac
import json
import logging
import queue
import socket
import sys
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Iterator, TextIO

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from .align import Message
from .context import read_context_file
from .pair import Batch, C2CModel, Prompt

try:  # the HTTP server is the optional extra c2c[serve]; chat() needs none of it
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
except ImportError:  # pragma: no cover
    FastAPI = None

log = logging.getLogger("c2c.serve")

# ("accepted", prompt tokens) | ("logprobs", [TokenLogprob]) (just before the delta they belong to)
# | ("delta", str) | ("done", Finish) | ("error", Exception)
Post = Callable[[str, object], None]


# ============================================================================================ shared core
@dataclass(frozen=True)
class Sampling:
    """Generation settings every job of one batch shares; temperature 0 is greedy."""

    temperature: float = 0.0
    top_p: float = 1.0
    fuse: bool = True
    seed: int | None = None  # a sampled request's seed: it runs as its own batch, after torch.manual_seed(seed)

    @classmethod
    def of(cls, temperature: float, top_p: float, fuse: bool, seed: int | None = None) -> "Sampling":
        """Greedy ignores top_p and seed, so that every greedy request can join the same batch."""
        sampled = temperature > 0
        return cls(float(temperature), float(top_p) if sampled else 1.0, fuse, seed if sampled else None)

    def generate_kwargs(self) -> dict:
        if self.temperature == 0:
            return {"do_sample": False, "fuse": self.fuse}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "fuse": self.fuse}


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token with its log-probability and the ``top`` likeliest alternatives, of the distribution
    it was drawn from (after temperature and top-p)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Finish:
    reason: str  # "stop" (end of sequence or stop sequence), "length", "cancelled"
    tokens: int  # tokens generated, the end-of-sequence token excluded


@dataclass(eq=False)
class Job:
    """One prompt to answer. ``post`` is called from the thread that runs the model."""

    prompt: Prompt
    max_tokens: int
    sampling: Sampling
    post: Post
    stop: tuple[str, ...] = ()
    context: str | None = None  # what only the sharers read (``sharer_contexts``); None: no context
    cancel: threading.Event = field(default_factory=threading.Event)
    request: object = None  # the jobs of one request share it: a seeded request is batched with nothing else
    param: str | None = None  # the request field holding the prompt, named by a refusal
    max_prompt_tokens: int | None = None  # the server's limit, checked where the prompt is tokenized
    top_logprobs: int | None = None  # None: no log-probabilities; k: each token's and its k likeliest alternatives


class Refused(ValueError):
    """A job's input refused before its first token: the server answers 400 naming ``param``."""

    def __init__(self, message: str, param: str | None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


class Row:
    """One job's answer as its tokens arrive. Text is held back only while it may still change: a partial
    UTF-8 character, or an ending that may be the start of a stop sequence."""

    def __init__(self, job: Job, tokenizer, eos_ids: set[int]):
        self.job, self.tokenizer, self.eos_ids = job, tokenizer, eos_ids
        self.ids: list[int] = []
        self.sent = ""
        self.finish: str | None = None
        self.logprobs: list[TokenLogprob] = []  # of tokens whose text is not sent yet

    def step(self, token: int, logprobs: torch.Tensor | None = None) -> None:
        """One decoding step: ``token`` and, when the job asked for them, the step's log-probabilities (V,)."""
        if self.finish:
            return
        if self.job.cancel.is_set():
            self.end("cancelled", self.sent)
        elif token in self.eos_ids:
            self.end("stop", self.text())
        else:
            if self.job.top_logprobs is not None and logprobs is not None:
                self.logprobs.append(self._logprob(token, logprobs))
            self.add(token)

    def _logprob(self, token: int, logprobs: torch.Tensor) -> TokenLogprob:
        top = torch.topk(logprobs, self.job.top_logprobs) if self.job.top_logprobs else None
        alternatives = tuple((self.tokenizer.decode([i]), float(v)) for v, i in zip(*top)) if top else ()
        return TokenLogprob(self.tokenizer.decode([token]), float(logprobs[token]), alternatives)

    def add(self, token: int) -> None:
        self.ids.append(token)
        text = self.text()
        cut = _find_stop(text, self.job.stop)
        if cut is not None:
            self.end("stop", text[:cut])
        elif len(self.ids) >= self.job.max_tokens:
            self.end("length", text)
        elif not text.endswith("\ufffd"):
            self.emit(text[:len(text) - _stop_start(text, self.job.stop)])

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def emit(self, text: str) -> None:
        if len(text) > len(self.sent):
            self._post_logprobs()
            self.job.post("delta", text[len(self.sent):])
            self.sent = text

    def _post_logprobs(self) -> None:
        if self.logprobs:
            self.job.post("logprobs", self.logprobs)
            self.logprobs = []

    def end(self, reason: str, text: str) -> None:
        self.emit(text)
        self._post_logprobs()  # tokens whose text never showed (a stop sequence's) still have theirs
        self.finish = reason
        self.job.post("done", Finish(reason, len(self.ids)))

    def fail(self, error: Exception) -> None:
        self.finish = "error"
        self.job.post("error", error)


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _stop_start(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest ending of ``text`` that begins a stop sequence."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class Rows(StoppingCriteria):
    """The stopping criterion of one batch; ``generate`` calls it with every step's tokens appended."""

    def __init__(self, jobs: list[Job], pair: C2CModel):
        eos = pair.receiver.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.rows = [Row(job, pair.receiver.tokenizer, eos_ids) for job in jobs]
        self.scores = LastScores() if any(job.top_logprobs is not None for job in jobs) else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        logprobs = self.scores.logprobs if self.scores else [None] * len(self.rows)  # (B, V) or Nones
        for row, token, row_logprobs in zip(self.rows, input_ids[:, -1].tolist(), logprobs):
            row.step(token, row_logprobs)
        return torch.tensor([row.finish is not None for row in self.rows], device=input_ids.device)

    def generate_kwargs(self) -> dict:
        return {"logits_processor": LogitsProcessorList([self.scores])} if self.scores else {}


class LastScores(LogitsProcessor):
    """Keeps the log-probabilities of the last step's distribution; ``generate`` runs it after its own processors
    (temperature, top-p), so they are those of the distribution each token is drawn from."""

    logprobs: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.logprobs = torch.log_softmax(scores.float(), dim=-1).cpu()  # (B, V)
        return scores


def generate_jobs(pair: C2CModel, jobs: list[Job]) -> list[str]:
    """Answer jobs of the same sampling as one batch; each job gets ("accepted", its prompt tokens), its deltas,
    then one done event, or one error event. Returns the finish reasons, in the jobs' order.

    This is the one place the prompts are tokenized (``prepare``, once per batch; ``generate`` reuses the batch).
    A job whose input is refused (``prepare`` raising, or over ``max_prompt_tokens``) gets a `Refused` error before
    any token, and the rest of the batch runs without it."""
    batch, refused = _prepare(pair, jobs)
    if batch is None:
        for job, error in refused.items():
            job.post("error", error)
        rest = [job for job in jobs if job not in refused]
        if len(rest) == len(jobs):  # no single job is at fault: run them one at a time
            return [reason for job in jobs for reason in generate_jobs(pair, [job])]
        answered = iter(generate_jobs(pair, rest) if rest else [])
        return ["error" if job in refused else next(answered) for job in jobs]
    for job, tokens in zip(jobs, batch.prompt_tokens()):
        job.post("accepted", tokens)
    rows = Rows(jobs, pair)
    try:
        pair.generate([job.prompt for job in jobs], max_new_tokens=max(job.max_tokens for job in jobs),
                      stopping_criteria=StoppingCriteriaList([rows]), prepared=batch, sharer_contexts=_contexts(jobs),
                      **rows.generate_kwargs(), **jobs[0].sampling.generate_kwargs())
    except Exception as error:  # reported to every waiting client; the server keeps running
        _fail(rows, error)
    for row in rows.rows:
        if row.finish is None:  # generate stopped for a reason of its own (none is expected)
            row.end("stop", row.text())
    return [row.finish for row in rows.rows]


def _contexts(jobs: list[Job]) -> list[str | None] | None:
    """Each job's sharer context (the per-row form of ``sharer_contexts``), or None when no job has one."""
    return [job.context for job in jobs] if any(job.context for job in jobs) else None


def _prepare(pair: C2CModel, jobs: list[Job]) -> tuple[Batch | None, dict[Job, Refused]]:
    """The jobs as one prepared batch, or (None, the jobs that cannot run with why). Only when the batch is
    refused is each job prepared alone (with and without its context, to name the field at fault)."""
    try:
        batch = pair.prepare([job.prompt for job in jobs], max_new_tokens=max(job.max_tokens for job in jobs),
                             sharer_contexts=_contexts(jobs))
    except ValueError:
        batch = None
    refused = {}
    if batch is not None:
        for job, tokens in zip(jobs, batch.prompt_tokens()):
            if job.max_prompt_tokens is not None and tokens > job.max_prompt_tokens:
                refused[job] = Refused(f"the prompt is {tokens} tokens, over this server's limit of "
                                       f"{job.max_prompt_tokens}; shorten it", job.param, "context_length_exceeded")
        return (None, refused) if refused else (batch, {})
    for job in jobs:
        try:
            pair.prepare([job.prompt], max_new_tokens=job.max_tokens)
        except ValueError as error:
            refused[job] = Refused(str(error), job.param)
            continue
        if job.context is not None:
            try:  # the translator's max_context_tokens, context + prompt over the receiver's positions or window
                pair.prepare([job.prompt], max_new_tokens=job.max_tokens, sharer_contexts=[job.context])
            except ValueError as error:
                refused[job] = Refused(f"sharer_context: {error}", "sharer_context")
    return None, refused


def _fail(rows: Rows, error: Exception) -> None:
    for row in rows.rows:
        if row.finish is None:
            row.fail(error)


# ============================================================================================ terminal chat
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


# ============================================================================================ the engine
class Engine:
    """The bounded job queue and the one thread that runs the model (see the module docstring)."""

    def __init__(self, pair: C2CModel, max_batch: int, window_s: float, max_queue: int):
        self.pair, self.max_batch, self.window_s, self.max_queue = pair, max_batch, window_s, max_queue
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.held: deque[Job | None] = deque()  # taken from the queue but not batched yet
        self.stats = {"batches": 0, "largest_batch": 0, "answered": 0, "cancelled": 0}
        self.thread = threading.Thread(target=self._loop, name="c2c-engine", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join()

    @property
    def waiting(self) -> int:
        return self.queue.qsize() + len(self.held)

    def submit(self, jobs: list[Job]) -> None:
        if self.waiting + len(jobs) > self.max_queue:
            raise APIError(429, f"the server is busy: {self.waiting} prompts are waiting and {len(jobs)} more would "
                                f"exceed its queue of {self.max_queue}; retry later",
                           "rate_limit_error", code="queue_full")
        for job in jobs:
            self.queue.put_nowait(job)

    def _loop(self) -> None:
        while batch := self._gather():
            self._run(batch)

    def _gather(self) -> list[Job]:
        """The oldest waiting job and the waiting jobs with its sampling; empty when told to stop."""
        waiting, self.held = self.held, deque()
        first = waiting.popleft() if waiting else self.queue.get()
        if first is None:
            return []
        batch = [first]
        deadline = time.monotonic() + self.window_s
        while len(batch) < self.max_batch:
            if waiting:
                job = waiting.popleft()
            else:
                try:
                    job = self.queue.get(timeout=max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
            seeded_elsewhere = first.sampling.seed is not None and job is not None and job.request is not first.request
            if job is not None and job.sampling == first.sampling and not seeded_elsewhere:
                batch.append(job)
            else:
                self.held.append(job)
        self.held.extend(waiting)
        return batch

    def _run(self, batch: list[Job]) -> None:
        live, gone = [], []
        for job in batch:
            (gone if job.cancel.is_set() else live).append(job)
        for job in gone:  # its client left while it waited; it still gets its one done event
            job.post("done", Finish("cancelled", 0))
        if live and live[0].sampling.seed is not None:
            torch.manual_seed(live[0].sampling.seed)  # the same seed, prompts and settings give the same text
        reasons = generate_jobs(self.pair, live) if live else []
        self.stats["batches"] += bool(live)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(live))
        self.stats["answered"] += sum(reason in ("stop", "length") for reason in reasons)
        self.stats["cancelled"] += len(gone) + reasons.count("cancelled")


# ============================================================================================ HTTP server
class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, _error_body(message, type, param, code)

    def response(self) -> Response:
        headers = {"Retry-After": "1"} if self.status == 429 else None
        return JSONResponse(self.body, status_code=self.status, headers=headers)


def _error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass(frozen=True)
class Limits:
    max_prompt_tokens: int
    max_tokens: int
    default_max_tokens: int
    max_body_bytes: int
    max_context_chars: int = 20000


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


@dataclass
class Server:
    pair: C2CModel
    engine: Engine
    model_name: str
    api_key: str | None
    limits: Limits


def create_app(pair: C2CModel, *, model_name: str = "c2c", api_key: str | None = None,
               max_prompt_tokens: int = 4096, max_tokens_limit: int = 1024, default_max_tokens: int = 256,
               max_body_bytes: int = 1 << 20, max_queue: int = 64, max_batch: int = 8,
               batch_window_ms: float = 10.0, max_context_chars: int = 20000) -> FastAPI:
    """An OpenAI-compatible app: /v1/chat/completions, /v1/completions, /v1/models, /health.

    Requests may add ``"c2c": false`` to be answered by the receiver alone, and ``"sharer_context": TEXT``
    (at most ``max_context_chars`` characters) for a text only the sharers read. ``max_queue`` bounds the prompts
    waiting for the model (more get 429); ``max_batch`` prompts arriving within ``batch_window_ms`` of each
    other with the same sampling run as one batch. With ``api_key``, /v1 requires ``Authorization: Bearer KEY``."""
    if FastAPI is None:
        raise ImportError("the server needs fastapi and uvicorn; install them with: pip install 'c2c[serve]'")
    sizes = dict(max_prompt_tokens=max_prompt_tokens, max_tokens_limit=max_tokens_limit, max_body_bytes=max_body_bytes,
                 max_queue=max_queue, max_batch=max_batch, max_context_chars=max_context_chars)
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    server = Server(pair, Engine(pair, max_batch, batch_window_ms / 1000, max_queue), model_name, api_key,
                    Limits(max_prompt_tokens, max_tokens_limit, min(default_max_tokens, max_tokens_limit),
                           max_body_bytes, max_context_chars))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        server.engine.start()
        yield
        server.engine.stop()

    app = FastAPI(title="c2c", lifespan=lifespan)
    app.state.server = server
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    created = int(time.time())

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "waiting": server.engine.waiting, **server.engine.stats}

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        _authorize(request, api_key)
        return {"object": "list", "data": [{
            "id": model_name, "object": "model", "created": created, "owned_by": "c2c",
            "receiver": pair.receiver.name, "sharers": [s.name for s in pair.sharers]}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _complete(request, server, CHAT)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _complete(request, server, COMPLETION)

    return app


def serve(pair: C2CModel, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          **app_options) -> None:
    """Run the server until interrupted; ``app_options`` go to `create_app`."""
    if host not in ("127.0.0.1", "localhost", "::1") and not app_options.get("api_key"):
        log.warning("serving on %s without an API key: anyone who can reach this port can use the model", host)
    uvicorn.run(create_app(pair, **app_options), host=host, port=port, log_level=log_level)


@contextlib.contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``app`` from a background thread inside the block; yields its base URL (port 0: a free port)."""
    sock = socket.create_server((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {host}:{sock.getsockname()[1]}")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


# -------------------------------------------------------------------------------------------- one request
async def _complete(request: Request, server: Server, endpoint: Endpoint) -> Response:
    """Validate, submit and answer one request of either endpoint, streamed or whole."""
    _authorize(request, server.api_key)
    body = await _read_json(request, server.limits.max_body_bytes)
    model = _field(body, "model", (str,), f"the model name {server.model_name!r}")
    if model != server.model_name:
        raise APIError(404, f"model {model!r} does not exist; this server serves {server.model_name!r} "
                            "(see GET /v1/models)", param="model", code="model_not_found")
    prompts = endpoint.prompts(body)
    options = _options(body, server.limits)
    if len(prompts) > server.engine.max_queue:
        raise APIError(400, f"the request has {len(prompts)} prompts; this server takes at most "
                            f"{server.engine.max_queue} per request (its queue): send them in several requests",
                       param=endpoint.param, code="too_many_prompts")
    inbox, request_id = Inbox(), object()
    top_logprobs = endpoint.top_logprobs(body)
    jobs = [Job(prompt, options.max_tokens, options.sampling, inbox.poster(index), options.stop, options.context,
                request=request_id, param=endpoint.param, max_prompt_tokens=server.limits.max_prompt_tokens,
                top_logprobs=top_logprobs) for index, prompt in enumerate(prompts)]
    server.engine.submit(jobs)
    watcher = asyncio.create_task(_watch_disconnect(request, jobs))
    try:  # the engine tokenizes and checks the prompts (the handler never touches a tokenizer): wait for its word
        prompt_tokens = await inbox.accepted(len(jobs))
    except BaseException:
        watcher.cancel()
        for job in jobs:
            job.cancel.set()
        raise
    head = {"id": f"{endpoint.id_prefix}-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": server.model_name}
    events = _events(inbox, jobs, watcher)
    if options.stream:
        return StreamingResponse(_stream(events, head, endpoint, prompt_tokens, options.include_usage,
                                         top_logprobs is not None),
                                 media_type="text/event-stream")
    return JSONResponse(await _whole(events, head, endpoint, prompt_tokens, top_logprobs is not None))


class Inbox:
    """The events of one request's jobs: posted from the model's thread, read on the event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue[tuple[int, str, object]] = asyncio.Queue()
        self.early: deque[tuple[int, str, object]] = deque()  # read while waiting for acceptance

    def poster(self, index: int) -> Post:
        return lambda kind, value: self.loop.call_soon_threadsafe(self.events.put_nowait, (index, kind, value))

    async def accepted(self, jobs: int) -> int:
        """The request's prompt tokens once the engine has accepted every job; the first refusal as a 400.
        Events that arrive meanwhile (another batch's deltas, a cancelled job's done) are kept for `_events`."""
        tokens, waiting = 0, set(range(jobs))
        while waiting:
            index, kind, value = await self.events.get()
            if kind == "error" and isinstance(value, Refused):
                raise APIError(400, str(value), param=value.param, code=value.code)
            if index in waiting and kind in ("accepted", "done", "error"):
                waiting.discard(index)
                tokens += value if kind == "accepted" else 0
            if kind != "accepted":
                self.early.append((index, kind, value))
        return tokens


async def _events(inbox: Inbox, jobs: list[Job], watcher: asyncio.Task) -> AsyncIterator[tuple[int, str, object]]:
    """(job index, kind, value) until every job is done; leaving early, or the client leaving (``watcher``),
    cancels the jobs."""
    try:
        remaining = len(jobs)
        while remaining:
            index, kind, value = inbox.early.popleft() if inbox.early else await inbox.events.get()
            if kind == "accepted":
                continue
            remaining -= kind in ("done", "error")
            yield index, kind, value
    finally:
        watcher.cancel()
        for job in jobs:
            job.cancel.set()


async def _watch_disconnect(request: Request, jobs: list[Job]) -> None:
    """Cancel the jobs when the client leaves: with the body read, the next ASGI message is the disconnect
    (no polling, which would wake the event loop for every waiting request)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    for job in jobs:
        job.cancel.set()


async def _stream(events: AsyncIterator, head: dict, endpoint: Endpoint, prompt_tokens: int,
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
                yield _sse(_error_body(f"generation failed: {value}", "server_error"))
                return
    if include_usage:
        yield chunk([], usage=_usage(prompt_tokens, completion_tokens))
    yield "data: [DONE]\n\n"


async def _whole(events: AsyncIterator, head: dict, endpoint: Endpoint, prompt_tokens: int, asked: bool) -> dict:
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
def _authorize(request: Request, api_key: str | None) -> None:
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
        raise APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' with the key "
                            "this server was started with", code="invalid_api_key")


async def _read_json(request: Request, limit: int) -> dict:
    """The body as a JSON object, read no further than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(f"{declared} bytes", limit)
    body = bytearray()
    try:
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise _too_large(f"more than {limit} bytes", limit)
    except ClientDisconnect:
        log.info("a client left while sending its request body (%d bytes read); nothing was answered", len(body))
        raise APIError(400, "the request body ended early: the client disconnected") from None
    try:
        data = json.loads(body)
    except ValueError as error:
        raise APIError(400, f"the body is not valid JSON ({error}); send a JSON object") from error
    if not isinstance(data, dict):
        raise APIError(400, f"the body must be a JSON object, got {type(data).__name__}")
    return data


def _too_large(size: str, limit: int) -> APIError:
    return APIError(413, f"the request body is {size}; this server accepts at most {limit} bytes: send a shorter "
                         "prompt (or start the server with a larger max_body_bytes)", code="body_too_large")


_REQUIRED = object()


def _field(body: dict, name: str, types: tuple[type, ...], expected: str, default: object = _REQUIRED,
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


def _options(body: dict, limits: Limits) -> Options:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _field(body, name, (int,), f"an integer from 1 to {limits.max_tokens} (this server's limit)",
                        limits.default_max_tokens, lambda v: 1 <= v <= limits.max_tokens)
    temperature = _field(body, "temperature", (int, float), "a number from 0 (greedy) to 2", 1.0,
                         lambda v: 0 <= v <= 2)
    top_p = _field(body, "top_p", (int, float), "a number above 0 and at most 1", 1.0, lambda v: 0 < v <= 1)
    stop = _field(body, "stop", (str, list), "a non-empty string or a list of up to 4 of them", [],
                  lambda v: bool(v) if isinstance(v, str) else len(v) <= 4 and all(isinstance(s, str) and s for s in v))
    stream = _field(body, "stream", (bool,), "true or false", False)
    stream_options = _field(body, "stream_options", (dict,), 'an object such as {"include_usage": true}', {})
    _field(body, "n", (int,), "1 (this server gives one answer per prompt)", 1, lambda v: v == 1)
    fuse = _field(body, "c2c", (bool,), "true (fused answer) or false (the receiver alone)", True)
    seed = _field(body, "seed", (int,), "an integer (the same seed and request give the same sampled text)", None)
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
    context = _field(body, "sharer_context", (str,), "a non-empty string: the text only the sharer reads", None,
                     lambda v: bool(v.strip()))
    if context is not None and len(context) > limit:
        raise APIError(400, f"'sharer_context' is {len(context)} characters, over this server's limit of {limit} "
                            "(its --max-context-chars); shorten it", param="sharer_context",
                       code="sharer_context_too_long")
    return context


ROLES = ("system", "user", "assistant")


def _messages(body: dict) -> list[Prompt]:
    messages = _field(body, "messages", (list,), "a non-empty list of messages {role, content}", valid=bool)
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
    prompt = _field(body, "prompt", (str, list), "a string or a non-empty list of strings (not token ids)",
                    valid=lambda v: isinstance(v, str) or bool(v) and all(isinstance(p, str) for p in v))
    return [prompt] if isinstance(prompt, str) else list(prompt)


async def _api_error(request: Request, error: APIError) -> Response:
    return error.response()


async def _http_error(request: Request, error: HTTPException) -> Response:
    """Unknown paths and methods, in OpenAI's error shape."""
    message = (f"{error.detail}: {request.method} {request.url.path}; this server serves POST /v1/chat/completions, "
               "POST /v1/completions, GET /v1/models and GET /health")
    return JSONResponse(_error_body(message, "invalid_request_error"), status_code=error.status_code)


def _chat_logprobs(body: dict) -> int | None:
    asked = _field(body, "logprobs", (bool,), "true or false", False)
    top = _field(body, "top_logprobs", (int,), "an integer from 0 to 20 (with logprobs: true)", None,
                 lambda v: 0 <= v <= 20)
    if top is not None and not asked:
        raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return (top or 0) if asked else None


def _completion_logprobs(body: dict) -> int | None:
    return _field(body, "logprobs", (int,), "an integer from 0 to 5: the alternatives per token", None,
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
