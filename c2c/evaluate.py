"""Evaluation: every method (models alone, text-to-text, C2C and its shuffled-sharer control, ensemble,
routing, a LoRA receiver) under one of four scoring protocols, with per-item records that make long runs
resumable, a summary with 95% intervals and latency, a Markdown table and a plot.

A *scorer* turns a prompt into a prefilled receiver state (ids + cache of all prompt tokens but the last);
the protocols (generate, letter, cloze, cloze-options) run on that state the same way for every method.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from tqdm import tqdm
from transformers import DynamicCache

from . import cache as kvcache
from .align import as_messages, render
from .context import context_span, cut_context, with_context
from .data import DataError, MCItem, cloze_continuations, extract_choice_letter, load_benchmark, mc_prompt
from .models import LoadedModel
from .names import DERIVED_METHODS, METHODS, RUN_METHODS, SCORINGS
from .pair import C2CModel
from .pair import continuation_logprobs as pair_continuation_logprobs
from .pair import pad_rows
from .rotary import Rotary

# Paired differences reported per benchmark: each channel's communication gain first, then over each baseline.
PAIRED_COMPARISONS = (("c2c", "c2c-shuffled"), ("c2c", "receiver"), ("c2c", "sharer"), ("c2c", "lora-receiver"),
                      ("c2c", "t2t"), ("c2c-translated", "c2c-translated-shuffled"), ("c2c-translated", "receiver"),
                      ("c2c-translated", "lora-receiver"), ("c2c-translated", "t2t"),
                      ("c2c-translated", "receiver-with-context"), ("c2c-translated", "c2c"),
                      ("receiver-enriched", "receiver"))
T2T_BACKGROUND_PROMPT = "Question: {question}\nUseful background knowledge for answering this question:"


# ------------------------------------------------------------------------------------------------ scorers
@dataclass
class Prefilled:
    """A prompt run through a model up to (not including) its last token."""

    model: torch.nn.Module
    tokenizer: object
    input_ids: torch.Tensor  # (1, P)
    cache: DynamicCache  # P - 1 positions


class Scorer(Protocol):
    name: str

    def prefill(self, prompt: str, other_prompt: str | None = None, context: str | None = None) -> Prefilled: ...


@dataclass
class ModelScorer:
    """One model alone, reading the prompt through its own chat template (if ``chat`` and it has one), with
    ``context`` as text ahead of the question when given."""

    name: str
    model: LoadedModel
    chat: bool

    @torch.no_grad()
    def prefill(self, prompt: str, other_prompt: str | None = None, context: str | None = None) -> Prefilled:
        messages = with_context(prompt, context) if context else as_messages(prompt)
        view = render(self.model.tokenizer, messages, self.chat)
        ids = torch.tensor([view.ids], device=self.model.model.device)
        output = self.model.model(input_ids=ids[:, :-1], cache=kvcache.full_length_cache(), use_cache=True,
                                  logits_to_keep=1)
        return Prefilled(self.model.model, self.model.tokenizer, ids, output.cache)


@dataclass
class EnrichedScorer:
    """The cache-enrichment oracle: the receiver prefills context + question, then the context's positions are
    dropped and the question's keys re-rotated to the positions they would have without it."""

    name: str
    model: LoadedModel
    chat: bool

    @torch.no_grad()
    def prefill(self, prompt: str, other_prompt: str | None = None, context: str | None = None) -> Prefilled:
        if not context:
            raise ValueError("receiver-enriched needs items with a context")
        messages = with_context(prompt, context)
        view = render(self.model.tokenizer, messages, self.chat)
        cut = cut_context(view, context_span(view, messages, context))
        device = self.model.model.device
        ids = torch.tensor([view.ids], device=device)
        output = self.model.model(input_ids=ids[:, :-1], cache=kvcache.full_length_cache(), use_cache=True,
                                  logits_to_keep=1)
        kept = torch.tensor((cut.prefix + cut.suffix)[:-1], device=device)  # cached positions kept (the last is not)
        new = torch.arange(len(kept), device=device)[None]
        rotary = Rotary(self.model.model)
        layers = [(rotary.move(k[:, :, kept], layer, kept[None], new), v[:, :, kept])
                  for layer, (k, v) in enumerate(kvcache.all_kv(output.cache))]
        kept_ids = torch.tensor([[view.ids[i] for i in cut.prefix + cut.suffix]], device=device)
        return Prefilled(self.model.model, self.model.tokenizer, kept_ids, kvcache.cache_from_kv(layers))


@dataclass
class PairScorer:
    """The receiver reading a fused cache; ``other_prompt`` makes the sharer read another question, ``context``
    gives the sharer a context through ``channel`` (None: every channel the pair has)."""

    name: str
    pair: C2CModel
    channel: str | None = None

    @torch.no_grad()
    def prefill(self, prompt: str, other_prompt: str | None = None, context: str | None = None) -> Prefilled:
        batch = self.pair.prepare([prompt], sharer_prompts=[other_prompt] if other_prompt else None,
                                  sharer_contexts=[context] if context else None, context_channel=self.channel)
        batch = batch.to(self.pair.device)
        cache = self.pair.prefill(batch, fuse=True)
        return Prefilled(self.pair.receiver.model, self.pair.receiver.tokenizer, batch.input_ids, cache)


# ------------------------------------------------------------------------------------------------ protocols
@torch.no_grad()
def continuation_logprobs(state: Prefilled, continuations: list[str]) -> list[tuple[float, int]]:
    """(sum of log-probabilities, token count) of each continuation after the prompt, in one batch."""
    sums, counts = pair_continuation_logprobs(state.model, state.tokenizer, state.input_ids,
                                              torch.ones_like(state.input_ids), state.cache, [continuations])
    return [(float(total), int(count)) for total, count in zip(sums, counts)]


@torch.no_grad()
def next_token_logits(state: Prefilled) -> torch.Tensor:
    cache = kvcache.repeat_rows(state.cache, 1)
    prefix = kvcache.seq_length(cache)
    position = torch.tensor([[prefix]], device=state.input_ids.device)
    return state.model(input_ids=state.input_ids[:, -1:], position_ids=position, cache=cache,
                       use_cache=True).logits[0, -1].float()


@torch.no_grad()
def greedy_text(state: Prefilled, max_new_tokens: int) -> tuple[str, int]:
    """Greedy continuation decoded by the stock ``generate`` from the prefilled cache; (text, new tokens)."""
    cache = kvcache.repeat_rows(state.cache, 1)
    output = state.model.generate(input_ids=state.input_ids, attention_mask=torch.ones_like(state.input_ids),
                                  cache=cache, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=state.tokenizer.pad_token_id)
    new = output[0, state.input_ids.shape[1]:]
    return state.tokenizer.decode(new, skip_special_tokens=True), len(new)


def score_item(state: Prefilled, item: MCItem, scoring: str, max_new_tokens: int) -> dict:
    """Prediction and per-choice scores of one prefilled item under a protocol."""
    if scoring == "generate":
        text, generated = greedy_text(state, max_new_tokens)
        return {"prediction": extract_choice_letter(text, len(item.choices)), "text": text,
                "generated_tokens": generated, "scores": None}
    if scoring == "letter":
        logits = next_token_logits(state)
        ids = [state.tokenizer(f" {letter}", add_special_tokens=False)["input_ids"][0] for letter in item.letters]
        scores = torch.log_softmax(logits, -1)[ids].tolist()
    else:  # cloze protocols: log-likelihood per character of each choice text, as lm-evaluation-harness's acc_norm
        continuations = cloze_continuations(item)
        scores = [total / len(text) for (total, _), text in
                  zip(continuation_logprobs(state, continuations), continuations)]
    return {"prediction": max(range(len(scores)), key=scores.__getitem__), "scores": scores,
            "generated_tokens": 0}


def item_prompt(item: MCItem, scoring: str) -> str:
    return mc_prompt(item, {"generate": "generate", "letter": "cloze-options", "cloze": "cloze",
                            "cloze-options": "cloze-options"}[scoring])


# ------------------------------------------------------------------------------------------------ methods
@dataclass
class EvalSetup:
    """What the methods need: the pair (with the fuser, if any) and optional LoRA receiver."""

    pair: C2CModel | None
    receiver: LoadedModel
    sharer: LoadedModel
    lora_receiver: LoadedModel | None = None
    fuser_path: str | None = None
    chat: bool = False
    t2t_tokens: int = 64
    max_new_tokens: int = 64


def method_runner(method: str, setup: EvalSetup, items: list[MCItem], scoring: str, seed: int,
                  backgrounds: dict[str, tuple[str, int]] | None = None) -> Callable[[MCItem], dict]:
    """A function that evaluates one item with ``method`` and returns its record (without timing).

    For t2t, ``backgrounds`` may hold sharer texts already written for some items (``sharer_backgrounds``,
    batched); each is used once, and any other item's is written on the spot."""
    def with_scorer(scorer: Scorer, partner: Callable[[MCItem], str | None] = lambda item: None,
                    prefix: Callable[[MCItem], tuple[str, dict]] = lambda item: ("", {}),
                    context: Callable[[MCItem], str | None] = lambda item: None):
        def run(item: MCItem) -> dict:
            text, extra = prefix(item)
            state = scorer.prefill(text + item_prompt(item, scoring), partner(item), context(item))
            return {**score_item(state, item, scoring, setup.max_new_tokens), **extra}
        return run

    def own_context(item: MCItem) -> str:
        if not item.context:
            raise ValueError(f"method {method} needs items with a context (item {item.id} has none): use a "
                             "context benchmark (synthetic-1fact, arc-easy-evidence, tipsheets, a JSONL with `context`)")
        return item.context

    if method == "receiver":
        return with_scorer(ModelScorer("receiver", setup.receiver, setup.chat))
    if method == "sharer":
        return with_scorer(ModelScorer("sharer", setup.sharer, setup.chat))
    if method in ("receiver-with-context", "sharer-with-context"):
        model = setup.receiver if method.startswith("receiver") else setup.sharer
        return with_scorer(ModelScorer(method, model, setup.chat), context=own_context)
    if method == "receiver-enriched":
        return with_scorer(EnrichedScorer(method, setup.receiver, setup.chat), context=own_context)
    if method in ("c2c-translated", "c2c-translated-shuffled"):
        if setup.pair is None or setup.pair.translators is None:
            raise ValueError(f"method {method} needs a checkpoint with a context translator: pass --fuser DIR "
                             "(fitted with `c2c train` method: translator)")
        scorer = PairScorer(method, setup.pair, "translated")
        if method == "c2c-translated":
            return with_scorer(scorer, context=own_context)
        partners = shuffled_partners(items, seed)
        return with_scorer(scorer, context=lambda item: own_context(partners[item.id]),
                           prefix=lambda item: ("", {"partner": partners[item.id].id}))
    if method == "lora-receiver":
        if setup.lora_receiver is None:
            raise ValueError("method lora-receiver needs --lora DIR (a LoRA adapter trained with `c2c train` "
                             "method: lora)")
        return with_scorer(ModelScorer("lora-receiver", setup.lora_receiver, setup.chat))
    if method in ("c2c", "c2c-shuffled"):
        if setup.pair is None:
            raise ValueError(f"method {method} needs a fuser: pass --fuser DIR")
        scorer = PairScorer(method, setup.pair, "fused")
        if method == "c2c":
            return with_scorer(scorer, context=lambda item: item.context)
        partners = shuffled_partners(items, seed)
        if any(item.context for item in items):  # context handoff: the sharer reads another item's context
            return with_scorer(scorer, context=lambda item: own_context(partners[item.id]),
                               prefix=lambda item: ("", {"partner": partners[item.id].id}))
        return with_scorer(scorer, partner=lambda item: item_prompt(partners[item.id], scoring),
                           prefix=lambda item: ("", {"partner": partners[item.id].id}))
    if method == "t2t":
        written = backgrounds if backgrounds is not None else {}

        def background(item: MCItem) -> tuple[str, dict]:
            text, generated = written.pop(item.id, None) or sharer_backgrounds(setup, [item])[0]
            return f"Background: {text.strip()}\n\n", {"background": text, "sharer_tokens": generated}
        return with_scorer(ModelScorer("receiver", setup.receiver, setup.chat), prefix=background)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


@torch.no_grad()
def sharer_backgrounds(setup: EvalSetup, items: list[MCItem]) -> list[tuple[str, int]]:
    """The t2t sharer's greedy background text for each item, generated in one left-padded batch:
    (text, new tokens, counting the end-of-sequence token when it stops early)."""
    tokenizer, model = setup.sharer.tokenizer, setup.sharer.model
    prompts = [T2T_BACKGROUND_PROMPT.format(question=item.question) for item in items]
    rows = [render(tokenizer, with_context(prompt, item.context) if item.context else as_messages(prompt),
                   setup.chat).ids for prompt, item in zip(prompts, items)]
    ids = pad_rows(rows, tokenizer.pad_token_id, left=True).to(model.device)  # (B, P)
    mask = pad_rows([[1] * len(row) for row in rows], 0, left=True).to(model.device)
    output = model.generate(input_ids=ids, attention_mask=mask, cache=kvcache.full_length_cache(),
                            max_new_tokens=setup.t2t_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    results = []
    for new in output[:, ids.shape[1]:].tolist():
        stops = [i for i, token in enumerate(new) if token in eos]
        results.append((tokenizer.decode(new, skip_special_tokens=True), stops[0] + 1 if stops else len(new)))
    return results


def shuffled_partners(items: list[MCItem], seed: int) -> dict[str, MCItem]:
    """Each item's partner for the shuffled control: a seeded derangement (never the item itself)."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return {items[order[i]].id: items[order[(i + 1) % len(order)]] for i in range(len(order))}


def derived_records(method: str, receiver: dict[str, dict], sharer: dict[str, dict]) -> list[dict]:
    """Ensemble (mean of both models' choice probabilities), confidence routing, and the routing oracle."""
    records = []
    for item_id, r in receiver.items():
        s = sharer.get(item_id)
        if s is None or r["scores"] is None:
            continue
        p_r, p_s = (torch.softmax(torch.tensor(x["scores"]), 0) for x in (r, s))
        if method == "ensemble":
            prediction, route = int(((p_r + p_s) / 2).argmax()), None
        elif method == "routing":
            route = "receiver" if p_r.max() >= p_s.max() else "sharer"
            prediction = (r if route == "receiver" else s)["prediction"]
        else:  # routing-oracle: right whenever either model is right
            route = "receiver" if r["correct"] else "sharer"
            prediction = (r if r["correct"] or not s["correct"] else s)["prediction"]
        records.append({"id": item_id, "subject": r["subject"], "gold": r["gold"], "prediction": prediction,
                        "correct": prediction == r["gold"], "route": route,
                        "latency_ms": r["latency_ms"] + s["latency_ms"], "generated_tokens": 0})
    return records


# ------------------------------------------------------------------------------------------------ the run
@dataclass
class EvalConfig:
    benchmarks: list[str]
    methods: list[str]
    scoring: str = "cloze-options"
    split: str = "test"
    limit: int | None = None
    seed: int = 0
    out: str = "results/eval"
    data_dir: str | None = None
    skip_bad: bool = False
    recompute: bool = False
    warmup: int = 1
    method_limits: dict[str, int] | None = None  # e.g. {"t2t": 50}: that method sees only the first 50 items
    throughput_batch: int | None = None  # also measure batched generation throughput (receiver vs C2C)
    t2t_batch: int = 1  # t2t's sharer texts generated this many items at a time (those items get no latency)

    def __post_init__(self):
        if self.t2t_batch < 1:
            raise ValueError(f"t2t_batch must be >= 1 (items per batched sharer generation), got {self.t2t_batch}")
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring {self.scoring!r} is unknown; expected one of {SCORINGS}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; expected some of {METHODS}")
        if self.scoring == "generate" and any(m in DERIVED_METHODS for m in self.methods):
            raise ValueError("ensemble and routing need per-choice scores: use a letter or cloze scoring, not generate")


def run_eval(config: EvalConfig, setup: EvalSetup) -> dict:
    """Evaluate, resuming from per-item files in ``config.out``; returns (and writes) the summary."""
    out = Path(config.out)
    runs = list(dict.fromkeys([d for m in config.methods for d in DERIVED_METHODS.get(m, (m,))]))
    summary = {"receiver": setup.receiver.name, "sharer": setup.sharer.name, "fuser": fuser_report(setup),
               "lora_receiver": setup.lora_receiver.name if setup.lora_receiver else None,
               "scoring": config.scoring, "split": config.split, "seed": config.seed, "limit": config.limit,
               "t2t_tokens": setup.t2t_tokens, "max_new_tokens": setup.max_new_tokens, "benchmarks": {}}
    for spec in config.benchmarks:
        # "ceval:val" overrides the split for one benchmark, "synthetic-3fact:test:200" also the limit
        name, _, rest = spec.partition(":")
        split, _, limit = rest.partition(":")
        if limit and not limit.isdigit():
            raise ValueError(f"benchmark {spec!r}: the limit after the split must be a number (NAME:SPLIT:LIMIT)")
        benchmark = load_benchmark(name, split or config.split, config.data_dir, config.skip_bad,
                                   int(limit) if limit else config.limit, config.seed)
        report = benchmark.report
        if not benchmark.items:
            raise DataError(f"{spec}: no usable items in {', '.join(report['files'])} ({report['rows_read']} rows read, "
                            f"dropped: {report['dropped'] or 'none'}); nothing to evaluate")
        if benchmark.report["bad_rows"]:
            print(f"note: {benchmark.name}: --skip-bad skipped {len(benchmark.report['bad_rows'])} malformed rows "
                  f"(listed in summary.json), first: {benchmark.report['bad_rows'][0]}", file=sys.stderr)
        folder = out / benchmark.name
        folder.mkdir(parents=True, exist_ok=True)
        limits = config.method_limits or {}
        records = {m: run_method(m, setup, benchmark.items[:limits.get(m)], config, folder) for m in runs}
        for method in config.methods:
            if method in DERIVED_METHODS:
                by_id = {m: {r["id"]: r for r in records[m]} for m in DERIVED_METHODS[method]}
                records[method] = derived_records(method, by_id["receiver"], by_id["sharer"])
                write_jsonl(folder / f"{method}.jsonl", records[method])
        summary["benchmarks"][benchmark.name] = {
            "n": len(benchmark.items), "split": benchmark.split, "scoring": config.scoring, "report": benchmark.report,
            "methods": {m: summarize(records[m]) for m in config.methods},
            "paired": {f"{a} - {b}": paired_difference(records[a], records[b]) for a, b in PAIRED_COMPARISONS
                       if a in records and b in records},
            # the sharer's pick taken up: C2C above its shuffled control here is the sharer's answer carried over
            "agreement_with_sharer": {m: agreement(records[m], records["sharer"]) for m in RUN_METHODS
                                      if m != "sharer" and m in records and "sharer" in records}}
        if config.throughput_batch:
            summary["benchmarks"][benchmark.name]["throughput"] = measure_throughput(
                setup, benchmark.items, config.throughput_batch)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "table.md").write_text(markdown_table(summary))
    plot(summary, out / "accuracy_vs_latency.png")
    return summary


def measure_throughput(setup: EvalSetup, items: list[MCItem], batch_size: int) -> dict:
    """Items per second of the generate protocol with prompts batched: the receiver alone and C2C."""
    if setup.pair is None:
        raise ValueError("the throughput mode compares the receiver with C2C: pass --fuser DIR")
    prompts = [item_prompt(item, "generate") for item in items]
    result = {"batch_size": batch_size, "n": len(prompts), "max_new_tokens": setup.max_new_tokens}
    for method, fuse in (("receiver", False), ("c2c", True)):
        started = time.perf_counter()
        for start in range(0, len(prompts), batch_size):
            setup.pair.generate(prompts[start:start + batch_size], max_new_tokens=setup.max_new_tokens, fuse=fuse)
        result[f"{method}_items_per_s"] = round(len(prompts) / (time.perf_counter() - started), 3)
    return result


def fuser_report(setup: EvalSetup) -> dict | None:
    """Where the fuser came from, its size and (when its training log is beside it) its training time."""
    if setup.pair is None:
        return None
    from .train import training_minutes  # train imports this module
    report = {"path": setup.fuser_path, "params": sum(p.numel() for p in setup.pair.fusers.parameters()),
              "translator_params": sum(p.numel() for p in setup.pair.translators.parameters())
              if setup.pair.translators is not None else 0,
              "train_minutes": None}
    if setup.fuser_path and (Path(setup.fuser_path) / "metrics.jsonl").is_file():
        report["train_minutes"] = training_minutes(setup.fuser_path)
    return report


def run_method(method: str, setup: EvalSetup, items: list[MCItem], config: EvalConfig, folder: Path) -> list[dict]:
    """Records for every item, reusing those already in ``folder/method.jsonl`` (unless recompute)."""
    path = folder / f"{method}.jsonl"
    if config.recompute and path.exists():
        path.unlink()
    records = read_jsonl(path)
    # a shuffled-control record counts only if its sharer read the partner this item set assigns: the
    # derangement changes with the items (another --limit or --method-limit), and a stale record would mix controls
    partners = shuffled_partners(items, config.seed) if method.endswith("-shuffled") else {}
    current = [r for r in records if r["id"] not in partners or r.get("partner") == partners[r["id"]].id]
    text = path.read_text() if path.exists() else ""
    if len(current) != len(records) or (text and (not text.endswith("\n") or len(records) != text.count("\n"))):
        write_jsonl(path, current)  # drop stale records and a line cut off by an interrupted run before appending
    done = {r["id"]: r for r in current}
    todo = [item for item in items if item.id not in done]
    if todo:
        backgrounds: dict[str, tuple[str, int]] = {}
        run = method_runner(method, setup, items, config.scoring, config.seed, backgrounds)
        for item in todo[:config.warmup]:
            run(item)  # warm-up: first calls pay for allocation and lazy initialisation
        group_size = config.t2t_batch if method == "t2t" else 1
        with path.open("a") as handle, tqdm(total=len(todo), desc=f"{folder.name} {method}",
                                            dynamic_ncols=True) as progress:
            for start in range(0, len(todo), group_size):
                group = todo[start:start + group_size]
                shared_ms, batched = 0.0, {}
                if len(group) > 1:  # t2t's sharer texts for the whole group at once; each item bears its share
                    started = time.perf_counter()
                    backgrounds.update(zip([item.id for item in group], sharer_backgrounds(setup, group)))
                    shared_ms = (time.perf_counter() - started) * 1000 / len(group)
                    batched = {"sharer_batch": len(group)}
                for item in group:
                    started = time.perf_counter()
                    result = run(item)
                    latency = (time.perf_counter() - started) * 1000 + shared_ms
                    record = {"id": item.id, "subject": item.subject, "gold": item.answer,
                              "correct": result["prediction"] == item.answer, "latency_ms": latency, **batched,
                              **result}
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    handle.flush()
                    done[item.id] = record
                    progress.update()
    return [done[item.id] for item in items]


def read_jsonl(path: Path) -> list[dict]:
    """Records of a per-item file; a line cut off by an interrupted run is skipped (the item is redone)."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def wilson(correct: int, n: int, z: float = 1.96) -> list[float]:
    if n == 0:
        return [0.0, 0.0]
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def summarize(records: list[dict]) -> dict:
    """Accuracy with its interval, and latency over the items run one at a time (``latency_n`` of them):
    an item whose t2t sharer text was generated in a batch has no single-request latency."""
    n = len(records)
    correct = sum(r["correct"] for r in records)
    latencies = sorted(r["latency_ms"] for r in records if r.get("sharer_batch", 1) == 1)
    subjects: dict[str, list[bool]] = {}
    for r in records:
        subjects.setdefault(r["subject"] or "all", []).append(r["correct"])
    return {"n": n, "accuracy": round(correct / n, 4) if n else 0.0, "ci95": wilson(correct, n),
            "latency_n": len(latencies),
            "latency_ms_mean": round(statistics.fmean(latencies), 2) if latencies else None,
            "latency_ms_p50": _quantile(latencies, 0.5), "latency_ms_p90": _quantile(latencies, 0.9),
            "per_subject": {s: round(sum(v) / len(v), 4) for s, v in sorted(subjects.items())} if len(subjects) > 1
            else None}


def paired_difference(records: list[dict], baseline: list[dict]) -> dict:
    """Accuracy difference of two methods on the same items, with a 95% interval from the per-item
    differences (normal approximation): the communication gain when the baseline is c2c-shuffled."""
    by_id = {r["id"]: r["correct"] for r in baseline}
    differences = [int(r["correct"]) - int(by_id[r["id"]]) for r in records if r["id"] in by_id]
    n = len(differences)
    if n < 2:
        return {"n": n, "difference": None, "ci95": None}
    mean = statistics.fmean(differences)
    half = 1.96 * statistics.stdev(differences) / math.sqrt(n)
    return {"n": n, "difference": round(mean, 4), "ci95": [round(mean - half, 4), round(mean + half, 4)]}


def paired_text(result: dict) -> str:
    """A ``paired_difference`` in points with its 95% interval: ``+2.2 [+0.3, +4.1]``."""
    lo, hi = result["ci95"]
    return f"{100 * result['difference']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def agreement(records: list[dict], reference: list[dict]) -> dict:
    """How often a method picks what ``reference`` picks on the same items (items either left unanswered are
    left out), with a Wilson 95% interval."""
    picks = {r["id"]: r["prediction"] for r in reference if r["prediction"] is not None}
    same = [r["prediction"] == picks[r["id"]] for r in records if r["id"] in picks and r["prediction"] is not None]
    return {"n": len(same), "agreement": round(sum(same) / len(same), 4) if same else None,
            "ci95": wilson(sum(same), len(same))}


def _quantile(values: list[float], q: float) -> float | None:
    return round(values[min(int(q * len(values)), len(values) - 1)], 2) if values else None


def markdown_table(summary: dict) -> str:
    names = list(summary["benchmarks"])
    methods = list(dict.fromkeys(m for b in summary["benchmarks"].values() for m in b["methods"]))
    lines = [f"Scoring: `{summary['scoring']}`, split `{summary['split']}`, t2t sharer budget "
             f"{summary['t2t_tokens']} new tokens. Accuracy % [95% CI], mean latency per item (ms, batch 1).", "",
             "| method | " + " | ".join(f"{n} (n={summary['benchmarks'][n]['n']})" for n in names) + " | mean |",
             "|---|" + "---|" * (len(names) + 1)]
    for method in methods:
        cells, accuracies = [], []
        for name in names:
            result = summary["benchmarks"][name]["methods"].get(method)
            if result is None:
                cells.append("-")
                continue
            accuracies.append(result["accuracy"])
            lo, hi = result["ci95"]
            latency = result["latency_ms_mean"]
            timing = "batched" if latency is None else f"{latency:.0f} ms"
            if latency is not None and result.get("latency_n", result["n"]) < result["n"]:
                timing += f" (n={result['latency_n']})"
            cells.append(f"{100 * result['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}], {timing}")
        mean = f"{100 * statistics.fmean(accuracies):.1f}" if accuracies else "-"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {mean} |")
    comparisons = list(dict.fromkeys(c for b in summary["benchmarks"].values() for c in b.get("paired", {})))
    if comparisons:
        lines += ["", "Paired differences on the same items, accuracy points [95% CI] (n); `c2c - c2c-shuffled` is the "
                  "communication gain.", "",
                  "| difference | " + " | ".join(names) + " | mean |", "|---|" + "---|" * (len(names) + 1)]
        for comparison in comparisons:
            cells, differences = [], []
            for name in names:
                result = summary["benchmarks"][name].get("paired", {}).get(comparison)
                if result is None or result["difference"] is None:
                    cells.append("-")
                    continue
                differences.append(result["difference"])
                cells.append(f"{paired_text(result)} ({result['n']})")
            mean = f"{100 * statistics.fmean(differences):+.1f}" if differences else "-"
            lines.append(f"| {comparison} | " + " | ".join(cells) + f" | {mean} |")
    agreeing = list(dict.fromkeys(m for b in summary["benchmarks"].values() for m in b.get("agreement_with_sharer", {})))
    if agreeing:
        lines += ["", "Agreement with the sharer's own pick, % of items [95% CI].", "",
                  "| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for method in agreeing:
            cells = []
            for name in names:
                result = summary["benchmarks"][name].get("agreement_with_sharer", {}).get(method)
                ok = result is not None and result["agreement"] is not None
                cells.append(f"{100 * result['agreement']:.1f} [{100 * result['ci95'][0]:.1f}, "
                             f"{100 * result['ci95'][1]:.1f}]" if ok else "-")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(summary["benchmarks"])
    figure, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4), squeeze=False)
    for axis, name in zip(axes[0], names):
        for method, result in summary["benchmarks"][name]["methods"].items():
            if result["latency_ms_mean"] is None:
                continue
            axis.scatter(result["latency_ms_mean"], 100 * result["accuracy"], label=method)
            axis.annotate(method, (result["latency_ms_mean"], 100 * result["accuracy"]), fontsize=7)
        axis.set(title=f"{name} ({summary['scoring']})", xlabel="mean latency per item (ms)", ylabel="accuracy (%)")
        axis.set_xscale("log")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
