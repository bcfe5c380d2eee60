"""lm-evaluation-harness against `c2c eval --scoring cloze` on the same ARC-Easy items, for the receiver
(fuse=False) and C2C, with the real default pair:

* c2c: `run_eval` exactly as `c2c eval --fuser FUSER --bench arc-easy --split test --limit N --seed 0
  --methods receiver,c2c --scoring cloze` runs it (its records go to a temporary folder);
* lm-eval: `lm_eval.simple_evaluate` with the `c2c` model (c2c.lm_eval_harness) on those items written as an
  lm-eval task (`write_task`), in both layouts: "c2c" (the leading space inside the choices: acc_norm divides by
  the characters c2c divides by) and "lm-eval" (lm-eval's usual target_delimiter " ", as its own arc_easy task).

Writes results/lm_eval_equality.json: the command, both accuracies, the items whose pick differs, and the
largest difference between the per-choice scores (log-likelihood per character).

    OMP_NUM_THREADS=1 C2C_DATA_DIR=../shared/data python benchmarks/lm_eval_equality.py [--limit 40]
"""

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from c2c.data import cloze_continuations, load_benchmark  # noqa: E402
from c2c.evaluation.evaluate import EvalConfig, EvalSetup, run_eval  # noqa: E402
from c2c.lm_eval_harness import C2CLM, write_task  # noqa: E402
from c2c.model.pair import C2CModel  # noqa: E402
from c2c.core.runlog import read_jsonl  # noqa: E402

LAYOUTS = {"c2c": "arc_easy_c2c_layout", "lm-eval": "arc_easy_lm_eval_layout"}


def compare(items, records: dict, samples: dict) -> dict:
    """Per layout: lm-eval's acc_norm and acc, the items whose acc_norm pick is not c2c's cloze pick, and the
    largest |lm-eval log-likelihood / characters of " " + choice - c2c's cloze score| over all choices (0.0: the
    same log-likelihoods, bit for bit)."""
    out = {}
    for layout, task in LAYOUTS.items():
        by_doc = {s["doc_id"]: s for s in samples[task]}
        differ, unequal, gap, norm, acc = [], [], 0.0, 0, 0
        for doc_id, item in enumerate(items):
            sample, record = by_doc[doc_id], records[item.id]
            lls = [ll for ll, _ in sample["filtered_resps"]]
            texts = cloze_continuations(item)
            gaps = [abs(ll / len(t) - score) for ll, score, t in zip(lls, record["scores"], texts)]
            gap = max(gap, *gaps)
            unequal += [item.id] if max(gaps) > 0 else []
            divisors = texts if layout == "c2c" else item.choices
            pick = max(range(len(lls)), key=lambda k: lls[k] / len(divisors[k]))
            differ += [item.id] if pick != record["prediction"] else []
            norm += sample["acc_norm"]
            acc += sample["acc"]
        out[layout] = {"task": task, "acc_norm": norm / len(items), "acc": acc / len(items),
                       "picks_differing_from_c2c_eval": len(differ), "differing_items": differ,
                       "items_with_unequal_scores": unequal, "max_abs_score_difference": gap}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuser", default="fusers/default_pair")
    parser.add_argument("--data-dir", default=None, help="the shared data folder (default: $C2C_DATA_DIR)")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1, help="lm-eval prompts prefilled together")
    parser.add_argument("--out", default="results/lm_eval_equality.json")
    args = parser.parse_args()
    data_dir = args.data_dir or os.environ.get("C2C_DATA_DIR")
    if not data_dir:
        raise SystemExit("give --data-dir DIR or set C2C_DATA_DIR (a folder with arc/ARC-Easy/test.jsonl)")
    started = time.perf_counter()
    items = load_benchmark("arc-easy", "test", data_dir=data_dir, limit=args.limit, seed=args.seed).items
    pair = C2CModel.from_pretrained(args.fuser, device="cpu")
    report = {"command": f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python {shlex.join(sys.argv)}"
                         + ("" if args.data_dir else f"  # C2C_DATA_DIR={data_dir}"),
              "c2c_eval_equivalent": f"c2c eval --fuser {args.fuser} --bench arc-easy --split test --limit "
                                     f"{args.limit} --seed {args.seed} --methods receiver,c2c --scoring cloze "
                                     f"--data-dir {data_dir}",
              "lm_eval_equivalent": f"python -m c2c.lm_eval_harness --model c2c --model_args fuser={args.fuser}"
                                    f"[,fuse=False] --tasks {','.join(LAYOUTS.values())} --include_path TASKS "
                                    f"--device cpu",
              "lm_eval_version": lm_eval.__version__, "benchmark": "arc-easy", "split": "test", "n": len(items),
              "seed": args.seed, "lm_eval_batch_size": args.batch_size, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for layout, task in LAYOUTS.items():
            write_task(items, Path(tmp) / "tasks", task, layout, cache_dir=Path(tmp) / "hf")
        config = EvalConfig(["arc-easy"], ["receiver", "c2c"], scoring="cloze", split="test", limit=args.limit,
                            seed=args.seed, out=str(Path(tmp) / "eval"), data_dir=data_dir)
        summary = run_eval(config, EvalSetup(pair, fuser_path=args.fuser))
        manager = TaskManager(include_path=str(Path(tmp) / "tasks"), include_defaults=False)
        for method, fuse in (("receiver", False), ("c2c", True)):
            records = {r["id"]: r for r in read_jsonl(Path(tmp) / "eval" / "arc-easy" / f"{method}.jsonl")}
            results = lm_eval.simple_evaluate(model=C2CLM(pair=pair, fuse=fuse, batch_size=args.batch_size),
                                              tasks=list(LAYOUTS.values()), log_samples=True, bootstrap_iters=0,
                                              task_manager=manager)
            report["methods"][method] = {
                "fuse": fuse,
                "c2c_eval_cloze_accuracy": sum(r["correct"] for r in records.values()) / len(records),
                "c2c_eval_summary_accuracy": summary["benchmarks"]["arc-easy"]["methods"][method]["accuracy"],
                "lm_eval": compare(items, records, results["samples"])}
    report["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({m: {"c2c eval": r["c2c_eval_cloze_accuracy"],
                          **{f"lm-eval acc_norm ({k})": v["acc_norm"] for k, v in r["lm_eval"].items()},
                          **{f"differing ({k})": v["picks_differing_from_c2c_eval"] for k, v in r["lm_eval"].items()}}
                      for m, r in report["methods"].items()}, indent=2))


if __name__ == "__main__":
    main()
