"""Which gates does a trained fuser need? Accuracy of one fuser with its learned gates, every gate open, and
every gate shut (= the receiver alone), on a seeded dev sample, same items and protocol as `c2c eval`.

Training samples each gate open with probability sigmoid(logit) at every step, so a fuser whose logits stay
near 0 was trained as a random mixture of layer subsets, while inference runs one fixed subset (logit > 0).

    python benchmarks/gate_ablation.py --fuser fusers/default_pair --bench arc-easy --split dev --limit 150
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from c2c.data import load_benchmark
from c2c.evaluation.evaluate import EvalSetup, method_runner
from c2c.model.pair import C2CModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fuser", required=True)
    parser.add_argument("--bench", default="arc-easy")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--limit", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scoring", default="cloze")
    parser.add_argument("--out", default="results/default_pair/gate_ablation.json")
    args = parser.parse_args()
    pair = C2CModel.from_pretrained(args.fuser)
    items = load_benchmark(args.bench, args.split, limit=args.limit, seed=args.seed).items
    learned = pair.gate_logits()
    result = {"command": "python " + " ".join(sys.argv), "fuser": args.fuser, "benchmark": args.bench,
              "split": args.split, "n": len(items), "scoring": args.scoring,
              "open_gates_learned": int(pair.open_gates().sum()), "gates": int(learned.numel()), "accuracy": {}}
    for name, fill in (("learned", None), ("all_open", 1.0), ("all_shut", -1.0)):
        with torch.no_grad():
            for fuser, logits in zip(pair.layer_fusers(), learned[0]):
                fuser.gate_logits.copy_(logits if fill is None else torch.full_like(logits, fill))
        run = method_runner("c2c", EvalSetup(pair), items, args.scoring, args.seed)
        result["accuracy"][name] = round(sum(run(item)["prediction"] == item.answer for item in items) / len(items), 4)
        print(name, result["accuracy"][name], flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
