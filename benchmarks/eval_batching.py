"""Batched evaluation (`c2c eval --batch-size N`) against one item at a time, on the default pair, side by side in
one run: items per second of the cloze scoring at batch 1 and at batch N for the receiver and C2C on the same
items, whether every item's pick is the same, and the largest per-choice score difference (nats per character).

    OMP_NUM_THREADS=1 python benchmarks/eval_batching.py [--fuser fusers/default_pair] [--bench arc-easy]
        [--limit 96] [--batch 8] [--out results/eval_batching.json]

Needs $C2C_DATA_DIR (or --data-dir) with the benchmark's files. Each (method, batch size) run is warmed up on one
batch first, as `c2c eval` does; items per second count the scoring time the records' latencies add up to (the
warm-up apart, reported as ``seconds_with_warmup``). ``speedup``: all methods' batch-1 time over their batch-N time.
``ceiling``: the receiver's own forward on rows of one length cut from the same prompts (no padding, nothing but the
model), in tokens per second at batch 1 and batch N: what batching can gain on this machine at most.
"""

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from c2c.data import load_benchmark
from c2c.evaluation.evaluate import EvalConfig, EvalSetup, run_method
from c2c.evaluation.scorers import item_prompt
from c2c.model.pair import C2CModel


@torch.no_grad()
def forward_ceiling(pair: C2CModel, prompts: list[str], batch: int, repeats: int = 3) -> dict:
    """Tokens per second of the receiver's forward at batch 1 and ``batch`` on the same tokens: every prompt cut
    to the shortest one's length, so that no row pads (best of ``repeats``)."""
    tokenizer, model = pair.receiver.tokenizer, pair.receiver.model
    rows = [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
    width = min(map(len, rows))
    ids = torch.tensor([row[:width] for row in rows[:len(rows) - len(rows) % batch]])  # (n, width)
    rates = {}
    for size in (1, batch):
        model(input_ids=ids[:size])  # warm-up
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            for start in range(0, len(ids), size):
                model(input_ids=ids[start:start + size])
            best = min(best, time.perf_counter() - started)
        rates[size] = ids.numel() / best
    return {"tokens_per_row": width, "rows": len(ids), "batch_1_tokens_per_s": round(rates[1], 1),
            f"batch_{batch}_tokens_per_s": round(rates[batch], 1), "ratio": round(rates[batch] / rates[1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuser", default="fusers/default_pair")
    parser.add_argument("--bench", default="arc-easy")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--methods", default="receiver,c2c")
    parser.add_argument("--scoring", default="cloze")
    parser.add_argument("--data-dir")
    parser.add_argument("--out", default="results/eval_batching.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    pair = C2CModel.from_pretrained(args.fuser, device="cpu")
    setup = EvalSetup(pair, fuser_path=args.fuser)
    items = load_benchmark(args.bench, args.split, args.data_dir, limit=args.limit, seed=0).items
    result = {"command": "python " + " ".join(sys.argv), "fuser": args.fuser, "receiver": pair.receiver.name, "sharer": pair.sharers[0].name,
              "benchmark": args.bench, "split": args.split, "n": len(items), "scoring": args.scoring,
              "batch_size": args.batch, "device": "cpu", "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "methods": {}}
    result["ceiling"] = forward_ceiling(pair, [item_prompt(item, args.scoring) for item in items], args.batch)
    print("ceiling", result["ceiling"], flush=True)
    all_same, all_diff, rates = True, 0.0, {1: 0.0, args.batch: 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            row, records = {}, {}
            for batch_size in (1, args.batch):
                folder = Path(tmp) / f"{method}-{batch_size}"
                folder.mkdir()
                config = EvalConfig([args.bench], [method], scoring=args.scoring, batch_size=batch_size)
                started = time.perf_counter()
                records[batch_size] = run_method(method, setup, items, config, folder)
                elapsed = time.perf_counter() - started
                scored = sum(r["latency_ms"] for r in records[batch_size]) / 1000
                row[f"batch_{batch_size}"] = {"seconds": round(scored, 2), "items_per_s": round(len(items) / scored, 3),
                                              "seconds_with_warmup": round(elapsed, 2)}
                rates[batch_size] += scored
                print(method, batch_size, row[f"batch_{batch_size}"], flush=True)
            one, many = records[1], records[args.batch]
            same = all(a["prediction"] == b["prediction"] for a, b in zip(one, many))
            diff = max(abs(x - y) for a, b in zip(one, many) for x, y in zip(a["scores"], b["scores"]))
            row.update(speedup=round(row[f"batch_{args.batch}"]["items_per_s"] / row["batch_1"]["items_per_s"], 2),
                       same_picks=same, max_score_difference=diff,
                       accuracy={b: round(sum(r["correct"] for r in records[b]) / len(items), 4)
                                 for b in (1, args.batch)})
            result["methods"][method] = row
            all_same, all_diff = all_same and same, max(all_diff, diff)
    result.update(speedup=round(rates[1] / rates[args.batch], 2), same_picks=all_same,
                  max_score_difference=all_diff)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("speedup", "same_picks", "max_score_difference")}))


if __name__ == "__main__":
    main()
