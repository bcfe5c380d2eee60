"""Evaluation recipe: every method (models alone, text-to-text, C2C and its shuffled-sharer control, ensemble,
routing, a LoRA receiver) under one of four scoring protocols (``evaluation.scorers``), with per-item records that make
long runs resumable and a summary with 95% intervals and latency, a Markdown table and a plot (``evaluation.metrics``).
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from ..core import cache as kvcache
from ..core.models import LoadedModel
from ..core.names import DERIVED_METHODS, METHODS, RUN_METHODS, SCORINGS
from ..core.runlog import read_jsonl, training_minutes, write_jsonl
from ..core.stats import agreement, paired_difference
from ..core.tensors import pad_rows, row_mask
from ..data import DataError, MCItem, load_benchmark
from ..inputs.align import Prompt, as_messages, render
from ..inputs.context import with_context
from ..model.pair import C2CModel
from ..runtime.passes import greedy_texts
from .metrics import markdown_table, plot, summarize, summarize_free
from .scorers import EnrichedScorer, ModelScorer, PairScorer, Scorer, item_prompt, score_items

__all__ = ["EvalConfig", "EvalSetup", "run_eval", "run_method", "method_runner", "sharer_backgrounds",
           "shuffled_partners", "derived_records", "measure_throughput", "fuser_report"]

# Paired differences reported per benchmark: each channel's communication gain first, then over each baseline.
PAIRED_COMPARISONS = (("c2c", "c2c-shuffled"), ("c2c", "receiver"), ("c2c", "sharer"), ("c2c", "lora-receiver"),
                      ("c2c", "t2t"), ("c2c-translated", "c2c-translated-shuffled"), ("c2c-translated", "receiver"),
                      ("c2c-translated", "lora-receiver"), ("c2c-translated", "t2t"),
                      ("c2c-translated", "receiver-with-context"), ("c2c-translated", "c2c"),
                      ("receiver-enriched", "receiver"))
FREE_COMPARISONS = (("receiver-with-context", "receiver"),)  # under free scoring also the ceiling's gain
T2T_BACKGROUND_PROMPT = "Question: {question}\nUseful background knowledge for answering this question:"


# ------------------------------------------------------------------------------------------------ methods
@dataclass
class EvalSetup:
    """What the methods need: the pair and an optional LoRA receiver. The pair's receiver with fusion off is the
    receiver baseline; ``fused`` False says its fuser is untrained (``c2c eval`` without --fuser), so the c2c
    methods refuse to run. Prompts render with chat templates as the pair's config says."""

    pair: C2CModel
    lora_receiver: LoadedModel | None = None
    fuser_path: str | None = None
    fused: bool = True
    t2t_tokens: int = 64
    max_new_tokens: int = 64

    @property
    def receiver(self) -> LoadedModel:
        return self.pair.receiver

    @property
    def sharer(self) -> LoadedModel:
        return self.pair.sharers[0]

    @property
    def chat(self) -> bool:
        return self.pair.config.chat_template


def method_runner(method: str, setup: EvalSetup, items: list[MCItem], scoring: str, seed: int,
                  backgrounds: dict[str, tuple[str, int]] | None = None) -> Callable[[list[MCItem]], list[dict]]:
    """A function that evaluates a batch of items (one or several) with ``method`` in one forward and returns
    their records (without timing), each as if its item were scored alone.

    For t2t, ``backgrounds`` may hold sharer texts already written for some items (``sharer_backgrounds``,
    batched); each is used once, and the other items' texts are written together, in one batch."""
    def with_scorer(scorer: Scorer, partner: Callable[[MCItem], str | None] = lambda item: None,
                    prefix: Callable[[MCItem], tuple[str, dict]] = lambda item: ("", {}),
                    context: Callable[[MCItem], str | None] = lambda item: None,
                    ahead: Callable[[MCItem], str | None] = lambda item: None):
        """``context``: what the scorer gives its sharer (or a model alone reads); ``ahead``: a context put in the
        prompt itself, as text ahead of the question (the pair's receiver with fusion off reading it)."""
        def prompt(text: str, item: MCItem) -> Prompt:
            question, read = text + item_prompt(item, scoring), ahead(item)
            return with_context(question, read) if read else question

        def run(batch: list[MCItem]) -> list[dict]:
            texts, extras = zip(*(prefix(item) for item in batch))
            state = scorer.prefill_batch([prompt(text, item) for text, item in zip(texts, batch)],
                                         [partner(item) for item in batch], [context(item) for item in batch])
            results = score_items(state, batch, scoring, setup.max_new_tokens)
            return [{**result, **extra} for result, extra in zip(results, extras)]
        return run

    def own_context(item: MCItem) -> str:
        if not item.context:
            raise ValueError(f"method {method} needs items with a context (item {item.id} has none): use a "
                             "context benchmark (synthetic-1fact, arc-easy-evidence, tipsheets, a JSONL with `context`)")
        return item.context

    def fuser_needed() -> None:
        if not setup.fused:
            raise ValueError(f"method {method} needs a fuser: pass --fuser DIR")

    receiver = PairScorer("receiver", setup.pair, fuse=False)  # the baseline: the pair with fusion off
    if method == "receiver":
        return with_scorer(receiver)
    if method == "sharer":
        return with_scorer(ModelScorer("sharer", setup.sharer, setup.chat))
    if method == "receiver-with-context":  # the context in the receiver's own prompt: fusion off reads no sharer's
        return with_scorer(receiver, ahead=own_context)
    if method == "sharer-with-context":
        return with_scorer(ModelScorer(method, setup.sharer, setup.chat), context=own_context)
    if method == "receiver-enriched":
        return with_scorer(EnrichedScorer(method, setup.receiver, setup.chat), context=own_context)
    if method in ("c2c-translated", "c2c-translated-shuffled"):
        if not setup.fused or setup.pair.translators is None:
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
        fuser_needed()
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
            text, generated = written.pop(item.id)
            return f"Background: {text.strip()}\n\n", {"background": text, "sharer_tokens": generated}
        score = with_scorer(receiver, prefix=background)

        def run_t2t(batch: list[MCItem]) -> list[dict]:
            unwritten = [item for item in batch if item.id not in written]
            if unwritten:
                written.update(zip([item.id for item in unwritten], sharer_backgrounds(setup, unwritten)))
            return score(batch)
        return run_t2t
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
    mask = row_mask(rows, left=True).to(model.device)
    return greedy_texts(model, tokenizer, ids, mask, kvcache.full_length_cache(), setup.t2t_tokens)


def shuffled_partners(items: list[MCItem], seed: int) -> dict[str, MCItem]:
    """Each item's partner for the shuffled control: the next item in a seeded cycle (never the item itself),
    skipping items with the same context (SQuAD's questions on one paragraph) while one with another is left."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n, partners = len(order), {}
    for i, index in enumerate(order):
        item, ahead = items[index], (items[order[(i + k) % n]] for k in range(1, n))
        partners[item.id] = next((p for p in ahead if not item.context or p.context != item.context),
                                 items[order[(i + 1) % n]])
    return partners


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
    # items scored per forward (every method and scoring); None: ``default_batch_size`` of the device
    batch_size: int | None = None

    def __post_init__(self):
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (items per forward), got {self.batch_size}")
        if self.t2t_batch < 1:
            raise ValueError(f"t2t_batch must be >= 1 (items per batched sharer generation), got {self.t2t_batch}")
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring {self.scoring!r} is unknown; expected one of {SCORINGS}")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown methods {unknown}; expected some of {METHODS}")
        if self.scoring in ("generate", "free") and any(m in DERIVED_METHODS for m in self.methods):
            raise ValueError(f"ensemble and routing need per-choice scores: use a letter or cloze scoring, "
                             f"not {self.scoring}")


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
        if config.scoring != "free" and not all(item.choices for item in benchmark.items):
            raise ValueError(f"{spec}: its items are free-text questions without answer choices, which scoring "
                             f"{config.scoring!r} cannot rank; evaluate them with --scoring free (scoring='free')")
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
        free = config.scoring == "free"  # free text: F1 (and the generation score) besides exact match
        pairs = [(a, b) for a, b in PAIRED_COMPARISONS + (FREE_COMPARISONS if free else ())
                 if a in records and b in records]
        summary["benchmarks"][benchmark.name] = {
            "n": len(benchmark.items), "split": benchmark.split, "scoring": config.scoring, "report": benchmark.report,
            "methods": {m: {**summarize(records[m]), **(summarize_free(records[m]) if free else {})}
                        for m in config.methods},
            "paired": {f"{a} - {b}": paired_difference(records[a], records[b], "f1" if free else "correct")
                       for a, b in pairs},
            **({"paired_generation": {f"{a} - {b}": paired_difference(records[a], records[b], "generation")
                                      for a, b in pairs}} if free and any(i.rivals for i in benchmark.items) else {}),
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
    if not setup.fused:
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
    if not setup.fused:
        return None
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
    if len(current) != len(records) or (text and (not text.endswith("\n") or len(records) != text.count("\n"))) \
            or (current and not path.exists()):  # packed records: unpacked before new ones are appended
        write_jsonl(path, current)  # drop stale records and a line cut off by an interrupted run before appending
    done = {r["id"]: r for r in current}
    todo = [item for item in items if item.id not in done]
    if todo:
        backgrounds: dict[str, tuple[str, int]] = {}
        run = method_runner(method, setup, items, config.scoring, config.seed, backgrounds)
        batch_size = config.batch_size or default_batch_size(setup.pair.device)
        if batch_size > 1:
            if config.warmup:
                run(todo[:batch_size])  # warm-up: first calls pay for allocation and lazy initialisation
            return run_batched(method, run, items, todo, batch_size, config.scoring, path, folder, done)
        for item in todo[:config.warmup]:
            run([item])  # warm-up: first calls pay for allocation and lazy initialisation
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
                    result = run([item])[0]
                    record = item_record(item, result, (time.perf_counter() - started) * 1000 + shared_ms,
                                         **batched)
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                    handle.flush()
                    done[item.id] = record
                    progress.update()
    return [done[item.id] for item in items]


def item_record(item: MCItem, result: dict, latency_ms: float, **extra) -> dict:
    """One line of a method's per-item file: the item, whether the prediction is right, its latency, ``extra``
    (how it was batched), then what the protocol returned (free text sets its own ``gold`` and ``correct``)."""
    return {"id": item.id, "subject": item.subject, "gold": item.answer, "correct": result["prediction"] == item.answer,
            "latency_ms": latency_ms, **extra, **result}


def default_batch_size(device: torch.device | str) -> int:
    """Items per forward when ``c2c eval`` is not given --batch-size: 8 on a GPU, 1 on a CPU."""
    return 8 if torch.device(device).type == "cuda" else 1


def run_batched(method: str, run_batch: Callable[[list[MCItem]], list[dict]], items: list[MCItem],
                todo: list[MCItem], batch_size: int, scoring: str, path: Path, folder: Path, done: dict[str, dict]
                ) -> list[dict]:
    """``run_method``'s loop with ``batch_size`` items per forward: each record gets its share of the batch's
    time as its latency and the batch's size as ``batch``; records are appended (and reused) per item.

    Items are batched in order of their prompt's length (with its context), so that a batch pads little."""
    todo = sorted(todo, key=lambda item: len(item_prompt(item, scoring)) + len(item.context or ""))
    with path.open("a") as handle, tqdm(total=len(todo), desc=f"{folder.name} {method}",
                                        dynamic_ncols=True) as progress:
        for start in range(0, len(todo), batch_size):
            group = todo[start:start + batch_size]
            started = time.perf_counter()
            results = run_batch(group)
            latency = (time.perf_counter() - started) * 1000 / len(group)
            for item, result in zip(group, results):
                record = item_record(item, result, latency, batch=len(group))
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                done[item.id] = record
            handle.flush()
            progress.update(len(group))
    return [done[item.id] for item in items]
