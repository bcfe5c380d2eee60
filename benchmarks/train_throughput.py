"""Training step time on the default pair, measured side by side on the same batches of real data:

(a) floor: the receiver's forward + backward over prompt + response alone (no fuser, no sharer);
(b) a full C2C step: sharer prefill + receiver prefill + fuser forward/backward + receiver response pass;
(c) the same C2C step with the sharer's K/V read from the on-disk store (warm, as from the second epoch on).

    python benchmarks/train_throughput.py [--steps 4] [--batch-size 8] [--out results/train_throughput.json]
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from c2c.data import load_training_data
from c2c.runtime.sharers import SharerKVStore, SharerRun
from c2c.model.pair import C2CModel
from c2c.training.objectives import MicroBatch, objective_sum, split


def floor_step(pair: C2CModel, batch) -> None:
    """Receiver forward + backward over the whole sequence (gradient to its input embeddings only)."""
    embeddings = pair.receiver.model.get_input_embeddings()(batch.input_ids).detach().requires_grad_(True)
    logits = pair.receiver.model(inputs_embeds=embeddings, attention_mask=batch.attention_mask).logits
    labels = batch.labels[:, 1:]
    torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                      ignore_index=-100, reduction="sum").backward()


def c2c_step(pair: C2CModel, batch, optimizer) -> None:
    objective_sum(pair, MicroBatch(batch), fuse=True).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default="results/train_throughput.json")
    args = parser.parse_args()
    conversations = load_training_data({"benchmark": "arc-easy", "split": "train", "prompt_style": "cloze-options",
                                        "target": "text"})[: args.steps * args.batch_size]
    pair = C2CModel.create("smollm2-135m-instruct", ["gemma3-270m"])
    pair.config.chat_template = False  # as recipes/default_pair_mc.yaml
    pair.fusers.train()
    optimizer = torch.optim.AdamW(pair.fusers.parameters(), lr=1e-4)
    batches = []
    for start in range(0, len(conversations), args.batch_size):
        prompts, responses = zip(*(split(c) for c in conversations[start:start + args.batch_size]))
        batches.append(pair.prepare(list(prompts), list(responses)))
    with tempfile.TemporaryDirectory() as folder:
        store = SharerKVStore(Path(folder), 2**34)
        for batch in batches:
            store.compute(pair, batch)  # fill the store (an earlier epoch)
        c2c_step(pair, batches[0], optimizer)  # warm-up
        floor_step(pair, batches[0])
        times = {"floor_ms": [], "c2c_ms": [], "c2c_reuse_ms": []}
        for batch in batches:
            started = time.perf_counter()
            floor_step(pair, batch)
            times["floor_ms"].append(time.perf_counter() - started)
            pair.sharer_cache_provider = SharerRun()  # the sharers run in the step
            started = time.perf_counter()
            c2c_step(pair, batch, optimizer)
            times["c2c_ms"].append(time.perf_counter() - started)
            pair.sharer_cache_provider = SharerKVStore(store.folder, store.max_bytes)  # read from disk in the step
            started = time.perf_counter()
            c2c_step(pair, batch, optimizer)
            times["c2c_reuse_ms"].append(time.perf_counter() - started)
        stored_bytes = store.bytes
    tokens = statistics.fmean(int(b.attention_mask.sum()) for b in batches)
    result = {"command": "python " + " ".join(sys.argv), "batch_size": args.batch_size, "steps": len(batches),
              "mean_tokens_per_step": tokens, "data": "arc-easy train, cloze-options prompts, answer-text targets",
              "sharer_store_bytes_per_example": stored_bytes // (len(batches) * args.batch_size)}
    for name, values in times.items():
        result[name] = round(1000 * statistics.median(values), 1)
        result[name.replace("_ms", "_tokens_per_s")] = round(tokens / statistics.median(values), 1)
    result["reuse_over_floor"] = round(result["c2c_reuse_ms"] / result["floor_ms"], 3)
    result["reuse_speedup_over_c2c"] = round(result["c2c_ms"] / result["c2c_reuse_ms"], 3)
    result["target"] = "reuse_over_floor <= 1.3"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
