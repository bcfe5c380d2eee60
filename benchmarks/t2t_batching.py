"""Is t2t with batched sharer texts (`c2c eval --t2t-batch N`) the same baseline as one item at a time, and how
much faster? On the default sharer, for items whose t2t records were written one at a time under --eval:

* identical: the texts written N at a time equal the stored single-item texts (the receiver then reads the
  same background, so the record's answer is the same);
* speed: the sharer's text-writing time per item, one at a time vs N at a time, on the same items, side by side.

    python benchmarks/t2t_batching.py [--eval results/default_pair/cloze] [--per-benchmark 16] [--batch 16]
        [--timed 16] [--out results/default_pair/t2t_batching.json]
"""

import argparse
import json
import time
from pathlib import Path

import torch

from c2c.data import load_benchmark
from c2c.evaluation.evaluate import EvalSetup, sharer_backgrounds
from c2c.model.pair import C2CModel
from c2c.core.runlog import read_jsonl
from c2c.core.models import DEFAULT_SHARER, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval", default="results/default_pair/cloze", help="a `c2c eval` folder with t2t records")
    parser.add_argument("--per-benchmark", type=int, default=16, help="stored single-item records compared per set")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--timed", type=int, default=16, help="items timed one at a time, then as one batch")
    parser.add_argument("--out", default="results/default_pair/t2t_batching.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    summary = json.loads((Path(args.eval) / "summary.json").read_text())
    sharer = load_model(DEFAULT_SHARER)
    if sharer.name != summary["sharer"]:
        raise SystemExit(f"{args.eval} was evaluated with sharer {summary['sharer']}, not {sharer.name}")
    # only the t2t sharer runs here; the pair around it is never fused
    setup = EvalSetup(C2CModel.create(sharer, [sharer], chat_template=False), fused=False,
                      t2t_tokens=summary["t2t_tokens"])

    compared, identical, differing = 0, 0, []
    timed_items = []
    for name, result in summary["benchmarks"].items():
        stored = {r["id"]: r for r in read_jsonl(Path(args.eval) / name / "t2t.jsonl") if "sharer_batch" not in r}
        benchmark = load_benchmark(name, result["split"], limit=summary["limit"], seed=summary["seed"])
        items = [item for item in benchmark.items if item.id in stored][:args.per_benchmark]
        timed_items = timed_items or items[:args.timed]
        for start in range(0, len(items), args.batch):
            group = items[start:start + args.batch]
            for item, (text, tokens) in zip(group, sharer_backgrounds(setup, group)):
                compared += 1
                same = text == stored[item.id]["background"] and tokens == stored[item.id]["sharer_tokens"]
                identical += same
                if not same:
                    differing.append({"benchmark": name, "id": item.id, "stored": stored[item.id]["background"],
                                      "batched": text})
        print(f"{name}: {len(items)} compared, {identical} identical so far", flush=True)

    sharer_backgrounds(setup, timed_items[:1])  # warm-up
    started = time.perf_counter()
    for item in timed_items:
        sharer_backgrounds(setup, [item])
    single = (time.perf_counter() - started) / len(timed_items)
    started = time.perf_counter()
    sharer_backgrounds(setup, timed_items)
    batched = (time.perf_counter() - started) / len(timed_items)

    report = {"eval": args.eval, "sharer": sharer.name, "t2t_tokens": setup.t2t_tokens, "batch": args.batch,
              "compared": compared, "identical": identical, "identical_fraction": round(identical / compared, 4),
              "timed_items": len(timed_items), "threads": torch.get_num_threads(),
              "single_s_per_item": round(single, 3), "batched_s_per_item": round(batched, 3),
              "speedup": round(single / batched, 2), "differing": differing}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "differing"}, indent=2))


if __name__ == "__main__":
    main()
