"""The same methods in two precisions on the same items: accuracy of each and their paired difference.

    python benchmarks/precision_compare.py BASE_FOLDER HALF_FOLDER BENCH [METHOD ...]

e.g. results/context_handoff results/context_handoff/bf16 synthetic-1fact c2c-translated c2c-translated-shuffled.
Writes HALF_FOLDER/precision_compare.json: per method, n, both accuracies, the paired difference (half - base)
and the share of items where the two pick the same choice. Items whose shuffled-control partner differs (it is
drawn within each run's sample) are left out.
"""
import json
import sys
from pathlib import Path

from c2c.core.stats import paired_difference
from c2c.core.runlog import read_jsonl


def records(folder: Path, bench: str, method: str) -> dict[str, dict]:
    return {r["id"]: r for r in read_jsonl(folder / bench / f"{method}.jsonl")}


def main(base: Path, half: Path, bench: str, methods: list[str]) -> None:
    out = {}
    for method in methods:
        a, b = records(base, bench, method), records(half, bench, method)
        # the shuffled control's partner is drawn within the sample: compare only items with the same partner
        ids = sorted(i for i in a.keys() & b.keys() if a[i].get("partner") == b[i].get("partner"))
        out[method] = {"n": len(ids), "base": sum(a[i]["correct"] for i in ids) / len(ids),
                       "half": sum(b[i]["correct"] for i in ids) / len(ids),
                       "half - base": paired_difference([b[i] for i in ids], [a[i] for i in ids]),
                       "same_pick": sum(a[i]["prediction"] == b[i]["prediction"] for i in ids) / len(ids)}
    (half / "precision_compare.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4:])
