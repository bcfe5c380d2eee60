"""Load test of the c2c server: the same greedy requests from concurrent clients, with batching on and off.

    python benchmarks/serve_load.py               # the default pair with an untrained fuser (acts as the receiver)
    python benchmarks/serve_load.py --fuser DIR   # a trained checkpoint
    python benchmarks/serve_load.py --tiny        # tiny random models: a quick check of the harness

Each mode starts its own server on loopback, answers one warm-up request, then ``--requests`` chat requests
(short prompts, greedy) from ``--concurrency`` client threads. The mixed workload then measures what a long
request in flight costs short ones (the scheduler's turns at decoding steps and prefill chunks): the short
requests' p50/p99 alone, and again while ``--long`` long requests (a prompt of about ``--long-words`` words,
``--long-tokens`` new tokens) are in flight; ``short_p99_ratio`` is with / alone (target: at most 2). It runs
twice, with the scheduler (batches take turns at decoding steps) and without it (``max_running=1``: each batch
runs to its end, as before the scheduler). Writes ``results/serve_load.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from c2c.core.models import DEFAULT_RECEIVER, DEFAULT_SHARER
from c2c.model.pair import C2CModel
from c2c.serve import create_app, running

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["What is the capital of France?", "Name three animals.", "Why is the sky blue?", "Who wrote Hamlet?",
           "Write a haiku about the sea.", "What is 12 times 7?", "Give me a synonym for happy.",
           "How many legs does a spider have?"]
MODES = {"batching": 8, "no_batching": 1}  # max_batch


def load_pair(args: argparse.Namespace) -> tuple[C2CModel, str]:
    """The pair to serve and a description of it."""
    if args.tiny:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny import tiny
        pair, fuser = C2CModel.create(tiny("qwen"), [tiny("llama")]), "untrained fuser"
    elif args.fuser:
        pair, fuser = C2CModel.from_pretrained(args.fuser), f"fuser {args.fuser}"
    else:
        pair, fuser = C2CModel.create(DEFAULT_RECEIVER, [DEFAULT_SHARER]), "untrained fuser"
    sharers = ", ".join(s.name for s in pair.sharers)
    return pair.eval(), f"receiver {pair.receiver.name}, sharer {sharers}, {fuser}"


def ask(client: httpx.Client, index: int, max_tokens: int) -> tuple[float, str | None]:
    """Latency in ms and the answer (None when the request failed)."""
    body = {"model": "c2c", "messages": [{"role": "user", "content": PROMPTS[index % len(PROMPTS)]}],
            "max_tokens": max_tokens, "temperature": 0}
    start = time.perf_counter()
    try:
        response = client.post("/v1/chat/completions", json=body)
        answer = response.json()["choices"][0]["message"]["content"] if response.status_code == 200 else None
    except httpx.HTTPError:
        answer = None
    return (time.perf_counter() - start) * 1000, answer


def run_mode(pair: C2CModel, max_batch: int, args: argparse.Namespace) -> tuple[dict, list[str | None]]:
    """Measure one server configuration; returns its metrics and the answers in request order."""
    app = create_app(pair, max_batch=max_batch, max_queue=max(64, args.requests))
    with running(app) as url, httpx.Client(base_url=url, timeout=600) as client:
        ask(client, 0, args.max_tokens)  # warm-up: first-call costs are not load
        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(lambda index: ask(client, index, args.max_tokens), range(args.requests)))
        seconds = time.perf_counter() - start
        largest_batch = client.get("/health").json()["largest_batch"]
    latencies = [ms for ms, answer in results if answer is not None]
    print(f"max_batch {max_batch}: latencies (s) in request order: {[round(ms / 1000, 1) for ms in latencies]}")
    metrics = {"throughput_rps": round(len(latencies) / seconds, 3),
               "p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
               "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
               "failed": len(results) - len(latencies), "seconds": round(seconds, 2), "largest_batch": largest_batch}
    return metrics, [answer for _, answer in results]


LONG_PROMPT = "Summarise the following notes and list every name in them. "


def latencies_ms(results: list[tuple[float, str | None]]) -> dict:
    values = [ms for ms, answer in results if answer is not None]
    return {"n": len(values), "failed": len(results) - len(values),
            "p50_ms": round(float(np.percentile(values, 50)), 1) if values else None,
            "p99_ms": round(float(np.percentile(values, 99)), 1) if values else None}


def run_mixed(pair: C2CModel, args: argparse.Namespace, max_running: int) -> dict:
    """Short requests alone, then the same short requests while long ones are in flight, on one server."""
    long_text = LONG_PROMPT + " ".join(f"note {i}: {PROMPTS[i % len(PROMPTS)]}" for i in range(args.long_words // 8))
    app = create_app(pair, max_batch=8, max_queue=64, max_running=max_running)
    with running(app) as url, httpx.Client(base_url=url, timeout=600) as client:
        ask(client, 0, args.max_tokens)  # warm-up

        def shorts() -> list[tuple[float, str | None]]:
            with ThreadPoolExecutor(args.short_concurrency) as pool:
                return list(pool.map(lambda index: ask(client, index, args.short_tokens), range(args.shorts)))

        alone = latencies_ms(shorts())
        body = {"model": "c2c", "messages": [{"role": "user", "content": long_text}], "max_tokens": args.long_tokens,
                "temperature": 0}
        with ThreadPoolExecutor(args.long) as pool:
            started = time.perf_counter()
            longs = [pool.submit(client.post, "/v1/chat/completions", json=body) for _ in range(args.long)]
            time.sleep(args.long_head_start)  # the long requests are prefilling or decoding
            with_long = latencies_ms(shorts())
            shorts_done = time.perf_counter() - started
            responses = [future.result() for future in longs]
            long_seconds = time.perf_counter() - started
        usage = [r.json()["usage"] for r in responses if r.status_code == 200]
        stats = client.get("/health").json()
    ratio = round(with_long["p99_ms"] / alone["p99_ms"], 2) if alone["p99_ms"] and with_long["p99_ms"] else None
    return {"max_running": max_running, "shorts": args.shorts, "short_tokens": args.short_tokens,
            "short_concurrency": args.short_concurrency,
            "long": args.long, "long_prompt_tokens": [u["prompt_tokens"] for u in usage],
            "long_completion_tokens": [u["completion_tokens"] for u in usage],
            "long_failed": len(responses) - len(usage), "long_seconds": round(long_seconds, 2),
            "shorts_finished_while_long_in_flight": shorts_done < long_seconds,
            "short_alone": alone, "short_with_long": with_long, "short_p99_ratio": ratio,
            "target": "short_p99_ratio <= 2", "met": ratio is not None and ratio <= 2,
            "most_batches_in_flight": stats["most_in_flight"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--fuser", help="a trained c2c checkpoint folder (default: an untrained default pair)")
    which.add_argument("--tiny", action="store_true", help="tiny random models, for a quick run")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--shorts", type=int, default=12, help="mixed workload: short requests")
    parser.add_argument("--short-tokens", type=int, default=8)
    parser.add_argument("--short-concurrency", type=int, default=2)
    parser.add_argument("--long", type=int, default=2, help="mixed workload: long requests in flight")
    parser.add_argument("--long-words", type=int, default=400)
    parser.add_argument("--long-tokens", type=int, default=96)
    parser.add_argument("--long-head-start", type=float, default=0.5, help="seconds the long requests run first")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "serve_load.json")
    args = parser.parse_args()

    pair, model = load_pair(args)
    modes, answers = {}, {}
    for name, max_batch in MODES.items():
        modes[name], answers[name] = run_mode(pair, max_batch, args)
        print(f"{name}: {modes[name]}", flush=True)
    slow = modes["no_batching"]["throughput_rps"]
    result = {"requests": args.requests, "failed": sum(m["failed"] for m in modes.values()),
              "concurrency": args.concurrency, "max_tokens": args.max_tokens, "model": model,
              "command": shlex.join(["python", *sys.argv]), "modes": modes,
              "batching_speedup": round(modes["batching"]["throughput_rps"] / slow, 2) if slow else None,
              "same_answers": answers["batching"] == answers["no_batching"],
              "mixed": run_mixed(pair, args, max_running=4), "mixed_without_scheduler": run_mixed(pair, args, 1)}
    print(f"mixed: {result['mixed']}\nwithout the scheduler: {result['mixed_without_scheduler']}", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
