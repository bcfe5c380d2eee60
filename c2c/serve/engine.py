"""The generation engine: `generate_jobs` answers jobs as one batch, `Engine` queues them for the model's thread.

The chat and the server share one core, `generate_jobs`: it runs prompts as one `pair.generate` batch with a `Rows` stopping
criterion, which ``generate`` calls after every decoding step. `Rows` turns each row's new token into a text
delta for that row's listener and ends the row on its own terms: its ``max_tokens``, its end-of-sequence, one
of its stop sequences (trimmed from the answer, as OpenAI does) or its cancel flag. So the rows of one batch
may ask for different lengths, and each answer is delivered the moment its row ends.

Server: a handler validates a request, turns each of its prompts into a `Job` and submits them to the
`Engine`, a bounded queue. The engine's thread takes the oldest waiting job plus the waiting jobs with the same
`Sampling` (all greedy requests share one), waiting up to ``batch_window_ms`` for more when it was idle, up to
``max_batch``, and starts the batch on a thread of its own. Batches in flight take turns on the model (`Turns`:
one at a time, since torch must not run one model from several threads at once): each gives it up after every
decoding step and every prefill chunk, so a request that arrives joins between steps and a long prompt does
not hold the model for its whole length. Only these model turns tokenize (fast tokenizers are not safe across
threads): each batch is prepared once and each job answered "accepted" or refused (a 400) before its first
token; the handler waits for that word, then reads its jobs' events from an asyncio queue and either streams
them as server-sent events or joins them into one answer; a client that disconnects sets its jobs' cancel flags.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from ..inputs.align import Prompt
from ..inputs.batch import Batch
from ..model.pair import C2CModel
from ..runtime.passes import Chunks, eos_ids
from .errors import APIError

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

    def __init__(self, jobs: list[Job], pair: C2CModel, between: Callable[[], None] | None = None):
        self.between = between  # called after every step's bookkeeping: another batch may take a turn
        self.rows = [Row(job, pair.receiver.tokenizer, eos_ids(pair.receiver.model)) for job in jobs]
        self.scores = LastScores() if any(job.top_logprobs is not None for job in jobs) else None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        logprobs = self.scores.logprobs if self.scores else [None] * len(self.rows)  # (B, V) or Nones
        for row, token, row_logprobs in zip(self.rows, input_ids[:, -1].tolist(), logprobs):
            row.step(token, row_logprobs)
        done = torch.tensor([row.finish is not None for row in self.rows], device=input_ids.device)
        if self.between is not None and not done.all():
            self.between()
        return done

    def generate_kwargs(self) -> dict:
        return {"logits_processor": LogitsProcessorList([self.scores])} if self.scores else {}


class LastScores(LogitsProcessor):
    """Keeps the log-probabilities of the last step's distribution; ``generate`` runs it after its own processors
    (temperature, top-p), so they are those of the distribution each token is drawn from."""

    logprobs: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.logprobs = torch.log_softmax(scores.float(), dim=-1).cpu()  # (B, V)
        return scores


def generate_jobs(pair: C2CModel, jobs: list[Job], turns: "Chunks | None" = None) -> list[str]:
    """Answer jobs of the same sampling as one batch; each job gets ("accepted", its prompt tokens), its deltas,
    then one done event, or one error event. Returns the finish reasons, in the jobs' order. ``turns``: the
    batch gives the model up after every prefill chunk of ``turns.size`` tokens and every decoding step
    (``turns.between``), so that other batches take their turns (the server's scheduler, `Turns`).

    This is the one place the prompts are tokenized (``prepare``, once per batch; ``generate`` reuses the batch).
    A job whose input is refused (``prepare`` raising, or over ``max_prompt_tokens``) gets a `Refused` error before
    any token, and the rest of the batch runs without it."""
    batch, refused = _prepare(pair, jobs)
    if batch is None:
        for job, error in refused.items():
            job.post("error", error)
        rest = [job for job in jobs if job not in refused]
        if len(rest) == len(jobs):  # no single job is at fault: run them one at a time
            return [reason for job in jobs for reason in generate_jobs(pair, [job], turns)]
        answered = iter(generate_jobs(pair, rest, turns) if rest else [])
        return ["error" if job in refused else next(answered) for job in jobs]
    for job, tokens in zip(jobs, batch.prompt_tokens()):
        job.post("accepted", tokens)
    rows = Rows(jobs, pair, turns.between if turns is not None else None)
    chunking = {"prefill_chunks": turns} if turns is not None else {}
    try:
        pair.generate([job.prompt for job in jobs], max_new_tokens=max(job.max_tokens for job in jobs),
                      stopping_criteria=StoppingCriteriaList([rows]), prepared=batch, sharer_contexts=_contexts(jobs),
                      **chunking, **rows.generate_kwargs(), **jobs[0].sampling.generate_kwargs())
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



# ============================================================================================ the engine
class Turns:
    """The model's time, shared by the batches in flight at the granularity of decoding steps and prefill chunks.

    One batch runs at a time (torch must not run one model from several threads at once); each gives the model
    up after a step or a chunk, and the next turn goes to the waiting batch with the least work left (its steps
    and chunks still to run, as estimated when it joined; the older batch on a tie), so a short request runs
    almost as if alone while a long one is in flight.
    """

    def __init__(self):
        self.condition = threading.Condition()
        self.work_left: dict[int, int] = {}  # batch -> turns it still needs (an estimate)
        self.waiting: set[int] = set()
        self.holder: int | None = None

    def enter(self, batch: int, work: int) -> None:
        """Count a batch as in flight (before its thread starts), with the turns it needs."""
        with self.condition:
            self.work_left[batch] = work

    def first_turn(self, batch: int) -> None:
        with self.condition:
            self._acquire(batch)

    def turn(self, batch: int) -> None:
        """End this batch's turn; it goes on at once when no other batch waits."""
        with self.condition:
            self.work_left[batch] = max(self.work_left[batch] - 1, 0)
            self._release()
            if self.waiting:
                self._acquire(batch)
            else:
                self.holder = batch

    def leave(self, batch: int) -> None:
        with self.condition:
            self._release()
            del self.work_left[batch]

    def in_flight(self) -> tuple[int, int]:
        """(batches in flight, the most work one of them has left)."""
        with self.condition:
            return len(self.work_left), max(self.work_left.values(), default=0)

    def wait(self, timeout: float) -> None:
        """Until a turn ends or a batch leaves (or ``timeout``)."""
        with self.condition:
            self.condition.wait(timeout)

    def _acquire(self, batch: int) -> None:  # with the condition held
        self.waiting.add(batch)
        self.condition.wait_for(lambda: self.holder is None
                                and batch == min(self.waiting, key=lambda b: (self.work_left[b], b)))
        self.waiting.discard(batch)
        self.holder = batch

    def _release(self) -> None:  # with the condition held
        self.holder = None
        self.condition.notify_all()


class Engine:
    """The bounded job queue, the thread that gathers jobs into batches, and the batches' own threads, which take
    turns on the model (`Turns`; see the module docstring).

    While batches run, a waiting job starts at once (as a batch of its own, with the waiting jobs like it) only
    when its work is at most ``short_fraction`` of the most any running batch has left and fewer than
    ``max_running`` run: a short request passes a long one, while requests of one size still gather into large
    batches as they queue behind the running one. A seeded batch keeps the model to itself (other batches'
    sampling would draw from the same generator)."""

    def __init__(self, pair: C2CModel, max_batch: int, window_s: float, max_queue: int, max_running: int = 4,
                 prefill_chunk: int = 64, short_fraction: float = 0.25):
        self.pair, self.max_batch, self.window_s, self.max_queue = pair, max_batch, window_s, max_queue
        self.max_running, self.prefill_chunk, self.short_fraction = max_running, prefill_chunk, short_fraction
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self.held: deque[Job | None] = deque()  # taken from the queue but not batched yet
        self.stats = {"batches": 0, "largest_batch": 0, "answered": 0, "cancelled": 0, "most_in_flight": 0}
        self.turns = Turns()
        self.batches: list[threading.Thread] = []
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

    def work(self, job: Job) -> int:
        """Turns a job needs, estimated before it is tokenized: its prefill chunks (about 4 characters a token)
        and its new tokens."""
        prompt = job.prompt if isinstance(job.prompt, str) else "".join(m.get("content", "") for m in job.prompt)
        characters = len(prompt) + len(job.context or "")
        return -(-characters // (4 * self.prefill_chunk)) + job.max_tokens

    def _loop(self) -> None:
        number = 0
        while True:
            running, most_left = self.turns.in_flight()
            if running:
                def admit(job: Job, room: bool = running < self.max_running, most_left: int = most_left) -> bool:
                    return room and self.work(job) <= self.short_fraction * most_left
                batch = self._gather(admit)
                if not batch:
                    self.turns.wait(timeout=0.05)  # a turn ends, a batch leaves, or a job may have arrived
                    continue
            else:
                batch = self._gather()
                if batch is None:
                    break
            number += 1
            self.turns.enter(number, max(self.work(job) for job in batch))
            thread = threading.Thread(target=self._batch, args=(number, batch), name="c2c-engine", daemon=True)
            self.batches = [t for t in self.batches if t.is_alive()] + [thread]
            thread.start()
        for thread in self.batches:
            thread.join()

    def _batch(self, number: int, batch: list[Job]) -> None:
        self.turns.first_turn(number)
        try:
            self.stats["most_in_flight"] = max(self.stats["most_in_flight"], self.turns.in_flight()[0])
            seeded = batch[0].sampling.seed is not None
            self._run(batch, None if seeded else Chunks(self.prefill_chunk, lambda: self.turns.turn(number)))
        finally:
            self.turns.leave(number)

    def _gather(self, admit: Callable[[Job], bool] | None = None) -> list[Job] | None:
        """The oldest waiting job and the waiting jobs with its sampling, up to ``max_batch``; None when told to
        stop. With ``admit``, without waiting and only jobs it admits: empty when there is none."""
        if admit is not None:
            waiting = deque(self.held)  # a copy: self.held is never changed in place while others may read it
            while True:
                try:
                    waiting.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            first = next((job for job in waiting if job is not None and admit(job)), None)
            batch = [first] if first is not None else []
            for job in waiting:
                if job is first or not batch:
                    continue
                if len(batch) < self.max_batch and self._joins(first, job) and admit(job):
                    batch.append(job)
            taken = {id(job) for job in batch}
            self.held = deque(job for job in waiting if id(job) not in taken)
            return batch
        waiting, self.held = self.held, deque()
        first = waiting.popleft() if waiting else self.queue.get()
        if first is None:
            return None
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
            if self._joins(first, job):
                batch.append(job)
            else:
                self.held.append(job)
        self.held.extend(waiting)
        return batch

    @staticmethod
    def _joins(first: Job, job: Job | None) -> bool:
        """Whether ``job`` can run in ``first``'s batch: the same sampling, and a seeded request runs alone."""
        seeded_elsewhere = first.sampling.seed is not None and job is not None and job.request is not first.request
        return job is not None and job.sampling == first.sampling and not seeded_elsewhere

    def _run(self, batch: list[Job], turns: Chunks | None) -> None:
        live, gone = [], []
        for job in batch:
            (gone if job.cancel.is_set() else live).append(job)
        for job in gone:  # its client left while it waited; it still gets its one done event
            job.post("done", Finish("cancelled", 0))
        if live and live[0].sampling.seed is not None:
            torch.manual_seed(live[0].sampling.seed)  # the same seed, prompts and settings give the same text
        reasons = generate_jobs(self.pair, live, turns) if live else []
        self.stats["batches"] += bool(live)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], len(live))
        self.stats["answered"] += sum(reason in ("stop", "length") for reason in reasons)
        self.stats["cancelled"] += len(gone) + reasons.count("cancelled")

