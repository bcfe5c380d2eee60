"""What the sectioned prefill changed (issue 15.1), from the records benchmarks/prefill_sections.sh wrote.

    python benchmarks/prefill_sections_table.py [results/default_pair/prefill_sections]

Writes table.md and table.json there: per shipped fuser, ARC-Easy dev accuracy of c2c and c2c-shuffled before
and after the fix, the communication gain (c2c - c2c-shuffled, paired), the paired change after - before, and on
how many items the pick changed, and how far the choice scores moved: the mean |after - before| over every choice,
as a share of the mean |before - receiver| (the whole fusion effect before the fix).
"""
import json
import sys
from pathlib import Path

from c2c.core.stats import paired_difference, paired_text
from c2c.core.runlog import read_jsonl

BENCH = "arc-easy"


def records(folder: Path, method: str) -> list[dict]:
    return read_jsonl(folder / BENCH / f"{method}.jsonl")


def score_shift(records_a: list[dict], records_b: list[dict]) -> float:
    """Mean absolute difference of the per-choice scores of two methods on the same items."""
    by_id = {r["id"]: r["scores"] for r in records_b}
    diffs = [abs(x - y) for r in records_a if r["id"] in by_id for x, y in zip(r["scores"], by_id[r["id"]])]
    return sum(diffs) / len(diffs)


def main(root: Path) -> None:
    rows, table = [], {}
    for fuser in sorted(p.name for p in root.iterdir() if (p / "after" / BENCH).is_dir()):
        sides = {side: {m: records(root / fuser / side, m) for m in ("receiver", "c2c", "c2c-shuffled")}
                 for side in ("before", "after")}
        entry = {}
        for method in ("c2c", "c2c-shuffled"):
            before, after = sides["before"][method], sides["after"][method]
            picks = {r["id"]: r["prediction"] for r in before}
            entry[method] = {"before": sum(r["correct"] for r in before) / len(before),
                             "after": sum(r["correct"] for r in after) / len(after),
                             "change": paired_difference(after, before),
                             "picks_changed": sum(r["prediction"] != picks[r["id"]] for r in after if r["id"] in picks),
                             "score_change_share": score_shift(after, before)
                             / score_shift(before, sides["before"]["receiver"])}
        entry["gain"] = {side: paired_difference(s["c2c"], s["c2c-shuffled"]) for side, s in sides.items()}
        entry["receiver"] = sum(r["correct"] for r in sides["after"]["receiver"]) / len(sides["after"]["receiver"])
        entry["n"] = len(sides["after"]["c2c"])
        table[fuser] = entry
        for method in ("c2c", "c2c-shuffled"):
            e = entry[method]
            rows.append(f"| {fuser} | {method} | {entry['n']} | {100 * entry['receiver']:.1f} | {100 * e['before']:.1f} "
                        f"| {100 * e['after']:.1f} | {paired_text(e['change'])} | {e['picks_changed']} "
                        f"| {100 * e['score_change_share']:.0f}% |")
        rows.append(f"| {fuser} | gain (c2c - c2c-shuffled) | {entry['n']} | | {paired_text(entry['gain']['before'])} "
                    f"| {paired_text(entry['gain']['after'])} | | | |")
    lines = [f"`{BENCH}` dev, cloze, seed 0. Accuracy %; paired differences in points [95% CI]. Before: only the last "
             "prompt token read the fused cache; after: every token after a fused run does.", "",
             "| fuser | method | n | receiver | before | after | after - before | picks changed | score change / "
             "fusion effect |", "|---|---|---|---|---|---|---|---|---|", *rows]
    (root / "table.md").write_text("\n".join(lines) + "\n")
    (root / "table.json").write_text(json.dumps(table, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/default_pair/prefill_sections"))
