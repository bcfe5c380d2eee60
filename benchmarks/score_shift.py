"""How far does the sharer move the fused receiver's choice scores? C2C against its shuffled control on the
same items, from a `c2c eval` folder's per-item records (cloze scores, log-likelihood per character):

* together: mean over items of |the common shift| (the mean over choices of C2C − shuffled);
* relative: mean over items of the mean absolute deviation of the choices' shifts from that common shift
  (only this part can change a pick);
* top-two gap: median over items of C2C's best minus second-best score (how far a pick is from flipping);
* picks changed: items where C2C and its control pick differently.

    python benchmarks/score_shift.py results/default_pair/round4/dev_distill [--bench arc-easy] [--out FILE]
"""

import argparse
import json
import statistics
from pathlib import Path

from c2c.data import load_benchmark
from c2c.evaluation.evaluate import shuffled_partners
from c2c.core.runlog import read_jsonl


def score_shift(folder: Path, items: list, seed: int) -> dict:
    """The statistics over ``items`` (the evaluated sample; per-item files may hold records of a larger one)."""
    fused = {r["id"]: r for r in read_jsonl(folder / "c2c.jsonl")}
    partners = shuffled_partners(items, seed)
    control = {r["id"]: r for r in read_jsonl(folder / "c2c-shuffled.jsonl")
               if r["id"] in partners and r.get("partner") == partners[r["id"]].id}
    together, relative, gaps, changed = [], [], [], 0
    for item in items:
        item_id = item.id
        if item_id not in fused or item_id not in control:
            raise SystemExit(f"{folder} lacks the c2c or current c2c-shuffled record of {item_id}: run its c2c eval")
        record = fused[item_id]
        shifts = [a - b for a, b in zip(record["scores"], control[item_id]["scores"])]
        common = statistics.fmean(shifts)
        together.append(abs(common))
        relative.append(statistics.fmean(abs(s - common) for s in shifts))
        top = sorted(record["scores"], reverse=True)
        gaps.append(top[0] - top[1])
        changed += record["prediction"] != control[item_id]["prediction"]
    return {"n": len(gaps), "together": round(statistics.fmean(together), 3),
            "relative": round(statistics.fmean(relative), 3), "top_two_gap_median": round(statistics.median(gaps), 3),
            "picks_changed": changed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("eval", help="a `c2c eval` output folder with c2c and c2c-shuffled records")
    parser.add_argument("--bench", default="arc-easy", help="the benchmark subfolder")
    parser.add_argument("--out", help="JSON file (default: EVAL/score_shift.json)")
    args = parser.parse_args()
    folder = Path(args.eval)
    summary = json.loads((folder / "summary.json").read_text())
    benchmark = load_benchmark(args.bench, summary["benchmarks"][args.bench]["split"], limit=summary["limit"],
                               seed=summary["seed"])
    report = {"eval": args.eval, "benchmark": args.bench, "split": benchmark.split, "limit": summary["limit"],
              "seed": summary["seed"], **score_shift(folder / args.bench, benchmark.items, summary["seed"])}
    out = Path(args.out or folder / "score_shift.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
