"""Prefill latency on the default pair: the receiver alone vs C2C (sharer prefill + fusion + receiver prefill).

Every fuser gate is forced open (the worst case: a trained fuser skips the layers whose gates are shut), and
the sharer reads the same text as the receiver. Methods are timed interleaved, median of --repeats runs.
``fuser_ms`` is what fusion costs beyond the two models' own passes: the fused prefill with the sharer's K/V
already computed, minus the receiver's prefill alone (it includes the sectioned prefill's extra receiver pass).

    python benchmarks/prefill_latency.py [--fuser DIR] [--repeats 3] [--out results/prefill_latency.json]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from c2c.runtime.sharers import SharerRun
from c2c.model.pair import C2CModel

WORDS = ("the cell uses light energy to split water and make sugar while carbon dioxide enters through small "
         "pores in the leaf and oxygen leaves as a product of the reaction").split()


def prompt_of(tokens: int, pair: C2CModel, seed: int) -> str:
    """A text whose receiver rendering (chat template included) is exactly ``tokens`` tokens long."""
    words = [WORDS[(seed + i) % len(WORDS)] for i in range(tokens * 2)]
    low, high = 1, len(words)
    while low < high:  # the longest prefix that fits
        middle = (low + high + 1) // 2
        if len(pair.render_prompt(" ".join(words[:middle])).ids) <= tokens:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low])


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return (time.perf_counter() - started) * 1000


@torch.no_grad()
def measure(pair: C2CModel, tokens: int, batch_size: int, repeats: int) -> dict:
    batch = pair.prepare([prompt_of(tokens, pair, seed) for seed in range(batch_size)])
    pair.prefill(batch, fuse=True)  # warm-up
    receiver, c2c, fuser = [], [], []
    for _ in range(repeats):
        receiver_ms = timed(lambda: pair.prefill(batch, fuse=False))
        receiver.append(receiver_ms)
        pair.sharer_cache_provider = SharerRun()  # nothing kept: the sharers run inside the timed prefill
        c2c.append(timed(lambda: pair.prefill(batch, fuse=True)))
        # fusion alone: the sharer K/V are kept from the prefill above, so this one runs receiver + fusers
        fuser.append(timed(lambda: pair.prefill(batch, fuse=True)) - receiver_ms)
    return {"tokens": int(batch.input_ids.shape[1]), "batch": batch_size,
            "sharer_tokens": int(batch.sharer_ids[0].shape[1]), "receiver_ms": round(statistics.median(receiver), 1),
            "c2c_ms": round(statistics.median(c2c), 1), "fuser_ms": round(statistics.median(fuser), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fuser", help="fuser folder (default: a fresh fuser of the default size)")
    parser.add_argument("--tokens", default="64,256,1024")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="results/prefill_latency.json")
    args = parser.parse_args()
    pair = C2CModel.from_pretrained(args.fuser) if args.fuser else \
        C2CModel.create("smollm2-135m-instruct", ["gemma3-270m"])
    pair.eval()
    with torch.no_grad():
        for fuser in pair.layer_fusers():
            fuser.gate_logits.fill_(1.0)
    entries = []
    for tokens in map(int, args.tokens.split(",")):
        for batch_size in map(int, args.batches.split(",")):
            entries.append(measure(pair, tokens, batch_size, args.repeats))
            print(entries[-1], flush=True)
    result = {
        "command": "python " + " ".join(sys.argv),
        "receiver": pair.receiver.name, "sharer": pair.sharers[0].name,
        "fuser_parameters": sum(p.numel() for p in pair.fusers.parameters()),
        "gates": "all open", "threads": torch.get_num_threads(), "entries": entries,
        "fuser_share_max": round(max(e["fuser_ms"] / e["c2c_ms"] for e in entries), 4),
        "c2c_over_receiver_max": round(max(e["c2c_ms"] / e["receiver_ms"] for e in entries), 3),
        "target": "fuser_ms / c2c_ms < 0.10 for every entry",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "entries"}, indent=2))


if __name__ == "__main__":
    main()
