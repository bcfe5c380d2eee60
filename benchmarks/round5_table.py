"""Round 5 (issue 20): the shipped choice fuser, its position-free retrain and the Identical control, side by side.

    python benchmarks/round5_table.py [results/default_pair]

Reads round 2's `cloze/summary.json` (the shipped fuser: its recipe renders no chat template, so the fixed
prefill computes exactly what it did) and `round5/{position_free,identical}/summary.json` (benchmarks/round5.sh),
and writes `round5/summary.json` (a `fusers` map: each fuser, its folder and its benchmarks) and `round5/table.md`:
accuracy per method, each fuser's communication gain (c2c - c2c-shuffled, paired), C2C against the Identical
fuser (paired), and the issue's targets. A fuser whose evaluation has not finished is left out.
"""
import json
import sys
from pathlib import Path

from c2c.core.stats import paired_difference, paired_text
from c2c.core.runlog import read_jsonl

FUSERS = {  # name -> (evaluation folder under the results root, fuser folder)
    "shipped": ("cloze", "fusers/default_pair"),
    "position_free": ("round5/position_free", "runs/default_pair_choices_position_free"),
    "identical": ("round5/identical", "runs/default_pair_choices_identical"),
}
BASELINES = ("receiver", "sharer", "lora-receiver")


def records(folder: Path, bench: str, method: str) -> list[dict]:
    return read_jsonl(folder / bench / f"{method}.jsonl")


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def main(root: Path) -> None:
    done = {name: (root / folder, fuser) for name, (folder, fuser) in FUSERS.items()
            if (root / folder / "summary.json").is_file()}
    summaries = {name: json.loads((folder / "summary.json").read_text()) for name, (folder, _) in done.items()}
    benches = list(summaries["shipped"]["benchmarks"])
    out = {"scoring": "cloze", "split": "test", "seed": 0, "fusers": {}}
    for name, (folder, fuser) in done.items():
        bench = summaries[name]["benchmarks"]
        out["fusers"][name] = {"fuser": fuser, "records": str(folder), "benchmarks": {
            b: {"n": bench[b]["n"], "methods": {m: bench[b]["methods"][m] for m in ("c2c", "c2c-shuffled")},
                "gain": bench[b]["paired"]["c2c - c2c-shuffled"]} for b in benches if b in bench}}
    out["baselines"] = {b: {m: summaries["shipped"]["benchmarks"][b]["methods"][m] for m in BASELINES} for b in benches}
    lines = ["Test sets, 500 items each (seed 0, cloze). Accuracy %; paired differences in points [95% CI].", "",
             "| method | " + " | ".join(benches) + " | mean |", "|---|" + "---|" * (len(benches) + 1)]

    def row(label: str, cells: list[float]) -> str:
        return f"| {label} | " + " | ".join(pct(c) for c in cells) + f" | {pct(sum(cells) / len(cells))} |"
    for method in BASELINES:
        lines.append(row(method, [out["baselines"][b][method]["accuracy"] for b in benches]))
    for name in done:
        for method in ("c2c", "c2c-shuffled"):
            lines.append(row(f"{name}: {method}", [out["fusers"][name]["benchmarks"][b]["methods"][method]["accuracy"]
                                                   for b in benches]))
    lines += ["", "| communication gain (c2c - c2c-shuffled) | " + " | ".join(benches) + " | above 0 |",
              "|---|" + "---|" * (len(benches) + 1)]
    for name in done:
        gains = [out["fusers"][name]["benchmarks"][b]["gain"] for b in benches]
        above = sum(g["ci95"][0] > 0 for g in gains)
        out["fusers"][name]["gain_ci_above_zero"] = above
        lines.append(f"| {name} | " + " | ".join(paired_text(g) for g in gains) + f" | {above} of {len(benches)} |")
    if "identical" in done:
        lines += ["", "| c2c - Identical c2c (paired) | " + " | ".join(benches) + " | mean |",
                  "|---|" + "---|" * (len(benches) + 1)]
        for name in [n for n in done if n != "identical"]:
            diffs = [paired_difference(records(done[name][0], b, "c2c"), records(done["identical"][0], b, "c2c"))
                     for b in benches]
            mean = sum(d["difference"] for d in diffs) / len(diffs)
            out["fusers"][name]["minus_identical"] = {b: d for b, d in zip(benches, diffs)}
            out["fusers"][name]["minus_identical_mean"] = round(mean, 4)
            lines.append(f"| {name} | " + " | ".join(paired_text(d) for d in diffs) + f" | {100 * mean:+.1f} |")
    if "position_free" in done and "identical" in done:
        fixed = out["fusers"]["position_free"]
        out["targets"] = {"gain above 0 (95% CI) on >= 3 of 5 benchmarks": fixed["gain_ci_above_zero"] >= 3,
                          "C2C above the Identical fuser on average": fixed["minus_identical_mean"] > 0}
        lines += ["", "Targets (issue 20, the fuser with both fixes):", ""]
        lines += [f"- {'met' if ok else 'MISSED'}: {t}" for t, ok in out["targets"].items()]
    (root / "round5").mkdir(exist_ok=True)
    (root / "round5" / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
    (root / "round5" / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/default_pair"))
