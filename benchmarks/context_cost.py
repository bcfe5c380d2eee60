"""What a context read once costs (issue 32), side by side in one run (medians over --repeats after a warm-up), on
SQuAD dev-split articles' paragraphs joined by blank lines, cut to a number of receiver tokens:
1. per context length, the translator (and placing its output) against the receiver's own prefill of the text;
2. Q questions about one ~1,024-token document, each answered with the same number of greedy tokens: read once
   and reused, against the receiver's cache of the prompt up to the context's end computed once and copied per
   question, and t2t (the sharer, its cache of the document reused, writes a note of up to 24 tokens);
3. the peak memory of reading a 4,096-token context in a fresh process, chunked (as shipped) and in one piece.
    OMP_NUM_THREADS=2 python benchmarks/context_cost.py [--fuser DIR] [--data SQUAD.json] [--repeats 3] [--tiny]
"""

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from statistics import mean, median

import torch
import transformers

from c2c.core import cache as kvcache
from c2c.runtime import passes
from c2c.translator import model as translation
from c2c.inputs.align import render
from c2c.inputs.context import ContextWarning, context_span, cut_context, sharer_reading, with_context
from c2c.data.prompts import FREE_PROMPT
from c2c.data.squad import article_splits
from c2c.evaluation.evaluate import T2T_BACKGROUND_PROMPT
from c2c.inputs.sections import TranslatedSection
from c2c.model.pair import C2CModel
from c2c.inputs.translated_context import TranslatedContext
from c2c.translator.config import TranslatorConfig

SIZES = {"full": dict(lengths=[256, 1024, 4096], questions=[1, 8, 32], document=1024, memory=4096, note=24),
         "tiny": dict(lengths=[16, 48], questions=[1, 2], document=48, memory=96, note=4)}
TARGETS = {"translate_over_prefill_at_1024_and_4096": ">= 8", "further_question_over_text_cache": "<= 1.2"}
WORDS = "the cell uses light energy to split water and make sugar while carbon dioxide enters the leaf".split()


def load_pair(args) -> C2CModel:
    if args.tiny:  # tiny random models (tests/tiny.py) with a random translator (an unfitted one writes zeros)
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny import tiny
        torch.manual_seed(4)
        pair = C2CModel.create(tiny("llama"), [tiny("gemma")], translator=TranslatorConfig(), chat_template=False)
        for linear in pair.translators[0].maps:
            torch.nn.init.normal_(linear.weight, 0, linear.weight.shape[1] ** -0.5)
    else:
        pair = C2CModel.from_pretrained(args.fuser)
    pair.context_memo.max_bytes = 0  # every reading is fresh
    return pair.eval()


def articles(args) -> list[tuple[str, list[str]]]:
    """(text, questions) per SQuAD dev-split article (test articles stay untouched): its paragraphs joined by blank
    lines, its questions."""
    if args.tiny:
        text = "\n\n".join(" ".join(WORDS[(p + i) % len(WORDS)] for i in range(30)) + "." for p in range(20))
        return [(text, ["What does the cell use?", "What enters the leaf?"])]
    data = json.loads(Path(args.data).read_text())["data"]
    splits = article_splits(article["title"] for article in data)
    return [("\n\n".join(p["context"].strip() for p in article["paragraphs"]),
             [qa["question"] for p in article["paragraphs"] for qa in p["qas"]])
            for article in data if splits[article["title"]] == "dev"]


def receiver_tokens(pair: C2CModel, text: str) -> list[int]:
    return pair.receiver.tokenizer(text, add_special_tokens=False)["input_ids"]


def passage(pair: C2CModel, texts: list[tuple[str, list[str]]], tokens: int) -> tuple[str, list[str]]:
    """The first article of at least ``tokens`` receiver tokens, cut to them, with its questions (then others')."""
    for text, questions in texts:
        if len(ids := receiver_tokens(pair, text)) >= tokens:
            return pair.receiver.tokenizer.decode(ids[:tokens]).strip(), questions + [q for _, qs in texts for q in qs]
    raise SystemExit(f"no article of the data has {tokens} receiver tokens")


def timed(function) -> tuple:
    started = time.perf_counter()
    return function(), (time.perf_counter() - started) * 1000


def side_by_side(functions: dict, repeats: int) -> dict[str, float]:
    """Median ms of each function, interleaved: one warm-up round, then ``repeats`` rounds."""
    rounds = [{name: timed(function)[1] for name, function in functions.items()} for _ in range(repeats + 1)][1:]
    return {name: round(median([times[name] for times in rounds]), 2) for name in functions}


@torch.no_grad()
def translate_vs_prefill(pair: C2CModel, text: str, repeats: int) -> dict:
    sharer, device = pair.sharers[0], pair.device
    view, tokens = sharer_reading(sharer.tokenizer, text)
    ids = torch.tensor([view.ids], device=device)
    mask = torch.ones_like(ids)
    at = torch.tensor(tokens, device=device)  # as C2CModel._translate: the context's own tokens
    picked = [tuple(kvcache.select_tokens(t, torch.zeros_like(at), at) for t in kv)
              for kv in translation.position_free_kv(sharer, ids, mask)]
    read = TranslatedContext(text, [(k[0], v[0]) for k, v in pair.translators[0](picked)], pair.context_identity(0))
    section = TranslatedSection(0, read.tokens, [read], [read.tokens])  # as prefill places it (at any start)
    own = torch.tensor([receiver_tokens(pair, text)], device=device)
    positions = torch.arange(read.tokens, device=device)[None]
    ms = side_by_side({"translate_ms": lambda: pair.translators[0](picked),
                       "place_ms": lambda: pair.translated_kv(0, section, positions),
                       "sharer_read_ms": lambda: translation.position_free_kv(sharer, ids, mask),
                       "receiver_prefill_ms": lambda: pair.receiver.model.model(input_ids=own)}, repeats)
    prefill, translate = ms["receiver_prefill_ms"], ms["translate_ms"]
    return {"receiver_tokens": own.shape[1], "sharer_tokens": read.tokens, "translated_bytes": read.nbytes, **ms,
            "translate_over_prefill": round(prefill / translate, 2),
            "translate_and_place_over_prefill": round(prefill / (translate + ms["place_ms"]), 2)}


def continue_from(model, tokenizer, cache, ids: list[int], new_tokens: int, exact: bool = True) -> list[int]:
    """Greedy new tokens after ``ids``, whose first positions are in ``cache`` (copied: it stays for the next)."""
    cache, cached = kvcache.repeat_rows(cache, 1), kvcache.seq_length(cache)
    ids = torch.tensor([ids], device=model.device)
    mask = torch.ones_like(ids)
    passes.extend_cache(model, cache, ids[:, cached:-1], mask[:, :-1],
                         torch.arange(cached, ids.shape[1] - 1, device=ids.device)[None])
    return passes.decode(model, tokenizer, ids, mask, cache, new_tokens, do_sample=False,
                          **({"min_new_tokens": new_tokens} if exact else {}))[0].tolist()


def shared_prefix(tokenizer, chat: bool, prompts: list[str], document: str) -> int:
    """Tokens that every prompt's rendering with the document shares, up to the document's end."""
    views = [render(tokenizer, with_context(p, document), chat) for p in prompts]
    end = max(cut_context(views[0], context_span(views[0], with_context(prompts[0], document), document)).dropped) + 1
    return next((i for i in range(end) if len({view.ids[i] for view in views}) > 1), end)


@torch.no_grad()
def reuse_vs_text_cache(pair: C2CModel, document: str, questions: list[str], counts: list[int], answer: int,
                        note: int, repeats: int) -> dict:
    questions = (questions * max(counts))[:max(counts)]
    receiver, sharer, chat, notes = pair.receiver, pair.sharers[0], pair.config.chat_template, []
    prompts, backgrounds = ([template.format(question=q) for q in questions]  # c2c eval's free-text and t2t prompts
                            for template in (FREE_PROMPT, T2T_BACKGROUND_PROMPT))
    r_end = shared_prefix(receiver.tokenizer, chat, prompts, document)
    s_end = shared_prefix(sharer.tokenizer, chat, backgrounds, document)
    r_ids = lambda i: render(receiver.tokenizer, with_context(prompts[i], document), chat).ids  # noqa: E731
    s_ids = lambda i: render(sharer.tokenizer, with_context(backgrounds[i], document), chat).ids  # noqa: E731
    cache_of = lambda model, ids: passes.prompt_cache(  # noqa: E731 (of ``ids`` but the last)
        model, torch.tensor([ids], device=model.device), torch.ones(1, len(ids), dtype=torch.long, device=model.device))
    reply = lambda cache, ids: continue_from(receiver.model, receiver.tokenizer, cache, ids, answer)  # noqa: E731

    def t2t(cache, i: int):
        written = continue_from(sharer.model, sharer.tokenizer, cache, s_ids(i), note, exact=False)
        notes.append(len(written))
        text = f"Background: {sharer.tokenizer.decode(written, skip_special_tokens=True).strip()}\n\n{prompts[i]}"
        reply(kvcache.full_length_cache(), pair.render_prompt(text).ids)

    methods = {"translated": (lambda: pair.read_context(document),  # (one-time work -> state, answer i from it)
                              lambda read, i: pair.generate(prompts[i], sharer_contexts=read, max_new_tokens=answer,
                                                            min_new_tokens=answer)),
               "text_cache": (lambda: cache_of(receiver.model, r_ids(0)[:r_end + 1]),
                              lambda cache, i: reply(cache, r_ids(i))),
               "t2t": (lambda: cache_of(sharer.model, s_ids(0)[:s_end + 1]), t2t)}
    rounds = {name: [] for name in methods}  # per repeat: (one-time ms, [ms per question])
    for round_ in range(repeats + 1):  # the first a warm-up on one question
        states = {name: timed(start) for name, (start, _) in methods.items()}
        times = {name: [] for name in methods}
        for index in range(len(questions) if round_ else 1):
            for name, (_, ask) in methods.items():  # side by side, question by question
                times[name].append(timed(lambda: ask(states[name][0], index))[1])
        for name in methods if round_ else []:
            rounds[name].append((states[name][1], times[name]))
    out = []
    for q in counts:  # the first q questions of each round
        entry = {"questions": q}
        for name, runs in rounds.items():
            total, further = median([o + sum(t[:q]) for o, t in runs]), median([sum(t[:q]) for _, t in runs])
            entry[name] = {"one_time_ms": round(median([o for o, _ in runs]), 2), "total_ms": round(total, 2),
                           "per_question_ms": round(total / q, 2), "further_question_ms": round(further / q, 2)}
        ratio = lambda name, key: round(entry[name][key] / entry["text_cache"][key], 3)  # noqa: E731
        out.append({**entry, "reuse_over_text_cache": ratio("translated", "per_question_ms"),
                    "further_question_over_text_cache": ratio("translated", "further_question_ms"),
                    "t2t_over_text_cache": ratio("t2t", "per_question_ms")})
    read = pair.read_context(document)
    return {"document_receiver_tokens": len(receiver_tokens(pair, document)), "document_sharer_tokens": read.tokens,
            "translated_bytes": read.nbytes, "distinct_questions": len(set(questions)), "answer_tokens": answer,
            "t2t_note_max_tokens": note, "t2t_note_tokens_mean": round(mean(notes), 1), "by_questions": out}


@torch.no_grad()
def memory_child(args) -> None:
    """In a fresh process, the RSS that reading the context on stdin adds at its peak (printed as JSON): VmHWM, reset
    after loading once the allocator has handed back what the loading freed (ru_maxrss keeps the loading's peak)."""
    translation.READ_CHUNK_TOKENS = 10 ** 9 if args.one_piece else translation.READ_CHUNK_TOKENS
    usage = lambda: {"ru_maxrss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # noqa: E731
                     **{line[:5]: round(int(line.split()[1]) / 1024, 1) for line in  # MiB, from KiB
                        Path("/proc/self/status").read_text().splitlines() if line[:5] in ("VmRSS", "VmHWM")}}
    pair = load_pair(args)
    pair.read_context("A short text to warm up.")
    ctypes.CDLL(None).malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to VmRSS (Linux)
    before, read = usage(), pair.read_context(sys.stdin.read())
    after = usage()
    print(json.dumps({"read_chunk_tokens": translation.READ_CHUNK_TOKENS, "translated_mib": read.nbytes / 2 ** 20,
                      "sharer_tokens": read.tokens, "before_read_mib": before, "after_read_mib": after,
                      "peak_increase_mib": round(after["VmHWM"] - before["VmHWM"], 1)}))


def memory(args, pair: C2CModel, document: str) -> dict:
    command = [sys.executable, __file__, "--memory-child", "--fuser", args.fuser, "--threads", str(args.threads)]
    command += ["--tiny"] * args.tiny
    runs = {name: json.loads(subprocess.run(command + flags, input=document, capture_output=True, text=True,
                                            check=True).stdout.splitlines()[-1])
            for name, flags in (("chunked", []), ("one_piece", ["--one-piece"]))}
    return {"context_receiver_tokens": len(receiver_tokens(pair, document)), **runs}


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuser", default="fusers/context_handoff")
    parser.add_argument("--data", default=str(Path(os.environ.get("C2C_DATA_DIR", "../shared/data")) / "squad" /
                                              "dev-v1.1.json"), help="the official SQuAD JSON (default: in $C2C_DATA_DIR)")
    for flag, default in (("--repeats", 3), ("--threads", 2), ("--answer-tokens", 16)):
        parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--out", default="results/context_handoff/cost.json")
    parser.add_argument("--tiny", action="store_true", help="tiny random models, generated text, small sizes")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one-piece", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", ContextWarning)  # contexts longer than the fit's texts: timed all the same
    if args.memory_child:
        return memory_child(args)
    size, repeats = SIZES["tiny" if args.tiny else "full"], 1 if args.tiny else args.repeats
    pair, texts, started = load_pair(args), articles(args), time.perf_counter()
    lengths = [translate_vs_prefill(pair, passage(pair, texts, tokens)[0], repeats) for tokens in size["lengths"]]
    reuse = reuse_vs_text_cache(pair, *passage(pair, texts, size["document"]), size["questions"], args.answer_tokens,
                                size["note"], repeats)
    report = {"benchmark": "context_cost", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "command": " ".join(["python", *sys.argv] if argv is None else ["python", __file__, *argv]),
              "fuser": "tiny random translator" if args.tiny else args.fuser,
              "data": "generated" if args.tiny else args.data, "receiver": pair.receiver.name,
              "sharer": pair.sharers[0].name, "device": str(pair.device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "transformers": transformers.__version__,
              "dtype": str(pair.receiver.model.dtype), "repeats": repeats, "targets": TARGETS,
              "translate_over_prefill": lengths, "reuse_over_text_cache": reuse,
              "memory": memory(args, pair, passage(pair, texts, size["memory"])[0])}
    report["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
