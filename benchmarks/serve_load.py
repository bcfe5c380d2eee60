"""Load test of the c2c server: the same greedy requests from concurrent clients, with batching on and off.

    python benchmarks/serve_load.py               # the default pair with an untrained fuser (acts as the receiver)
    python benchmarks/serve_load.py --fuser DIR   # a trained checkpoint
    python benchmarks/serve_load.py --tiny        # tiny random models: a quick check of the harness

Each mode starts its own server on loopback, answers one warm-up request, then ``--requests`` chat requests
(short prompts, greedy) from ``--concurrency`` client threads. Writes ``results/serve_load.json``.
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

from c2c.models import DEFAULT_RECEIVER, DEFAULT_SHARER
from c2c.pair import C2CModel
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--fuser", help="a trained c2c checkpoint folder (default: an untrained default pair)")
    which.add_argument("--tiny", action="store_true", help="tiny random models, for a quick run")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
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
              "same_answers": answers["batching"] == answers["no_batching"]}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
