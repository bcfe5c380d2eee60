"""The context-handoff ladder and its targets (issue 16), read from the summaries `c2c eval` wrote.

    python benchmarks/context_handoff_table.py [results/context_handoff]

Writes `ladder.md` and `targets.json` beside the summaries: one row per rung (the Identical pair, the default
pair's translated context, its fused prompt) with every control, the communication gain (the channel minus its
shuffled control, paired 95% interval), the share of the gap from `receiver` to `receiver-with-context` that the
channel closes, and whether each of the issue's targets holds. Chance is the mean of 1/#choices over the items.
"""
import json
import sys
from pathlib import Path

from c2c.core.stats import paired_difference, paired_text
from c2c.core.runlog import read_jsonl

BENCH = "synthetic-1fact"
RUNGS = [  # (label, folder under the results root, channel method)
    ("Identical pair (SmolLM2 <- SmolLM2), translated context", "identical", "c2c-translated"),
    ("Default pair (SmolLM2 <- Gemma-3), translated context", ".", "c2c-translated"),
    ("Default pair (SmolLM2 <- Gemma-3), fused prompt (paper's channel)", "fused_prompt", "c2c"),
    ("Default pair, translated context fitted on 3x the general text (ablation)", "more_text", "c2c-translated"),
]


def records(folder: Path, method: str) -> list[dict]:
    return read_jsonl(folder / BENCH / f"{method}.jsonl")


def chance(folder: Path) -> float:
    receiver = records(folder, "receiver")
    return sum(1 / len(r["scores"]) for r in receiver) / len(receiver)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def cell(method: dict | None) -> str:
    return f"{pct(method['accuracy'])} [{pct(method['ci95'][0])}, {pct(method['ci95'][1])}]" if method else "-"


def rung(root: Path, folder: str, channel: str) -> dict:
    bench = json.loads((root / folder / "summary.json").read_text())["benchmarks"][BENCH]
    methods, paired = bench["methods"], bench["paired"]
    # the Identical and fused-prompt runs reuse the main run's receiver-with-context records (same model, items)
    ceiling = (methods.get("receiver-with-context")
               or json.loads((root / "summary.json").read_text())["benchmarks"][BENCH]["methods"]["receiver-with-context"])
    receiver, shuffled = methods["receiver"], methods[f"{channel}-shuffled"]
    gain = paired[f"{channel} - {channel}-shuffled"]
    closed = (methods[channel]["accuracy"] - receiver["accuracy"]) / (ceiling["accuracy"] - receiver["accuracy"])
    return {"n": bench["n"], "chance": chance(root / folder), "receiver": receiver, "ceiling": ceiling,
            "channel": methods[channel], "shuffled": shuffled, "lora": methods.get("lora-receiver"),
            "gain": gain, "gap_closed": closed}


def main(root: Path) -> None:
    rows = {label: rung(root, folder, channel) for label, folder, channel in RUNGS
            if (root / folder / "summary.json").is_file()}
    lines = [f"`{BENCH}` test, cloze scoring, seed 0: accuracy % [95% CI]; gain = channel - its shuffled control "
             "(paired, same items); gap closed = (channel - receiver) / (receiver-with-context - receiver).", "",
             "| rung | n | receiver | receiver-with-context | channel | shuffled control | lora-receiver "
             "| gain | gap closed |", "|---|---|---|---|---|---|---|---|---|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['n']} | {cell(r['receiver'])} | {cell(r['ceiling'])} | {cell(r['channel'])} "
                     f"| {cell(r['shuffled'])} | {cell(r['lora'])} | {paired_text(r['gain'])} | {100 * r['gap_closed']:.0f}% |")
    identical, default = rows[RUNGS[0][0]], rows[RUNGS[1][0]]
    lora = default["lora"]
    targets = {
        "translated gain >= +15 points, 95% CI above 0":
            default["gain"]["difference"] >= 0.15 and default["gain"]["ci95"][0] > 0,
        "translated closes >= 50% of the receiver -> receiver-with-context gap": default["gap_closed"] >= 0.5,
        "lora-receiver within its 95% CI of chance": lora["ci95"][0] <= default["chance"] <= lora["ci95"][1],
        "Identical pair closes >= 90% of the gap": identical["gap_closed"] >= 0.9,
    }
    lines += ["", f"Chance: {pct(default['chance'])}%. Targets (issue 16):", ""]
    lines += [f"- {'met' if ok else 'MISSED'}: {name}" for name, ok in targets.items()]
    translated = [(label, r) for label, r in rows.items() if r["channel"].get("per_subject")]
    attributes = sorted(translated[0][1]["channel"]["per_subject"])
    lines += ["", "Accuracy % by the attribute asked (channel; the shuffled control in brackets):", "",
              "| rung | " + " | ".join(attributes) + " |", "|---|" + "---|" * len(attributes)]
    lines += [f"| {label} | " + " | ".join(f"{pct(r['channel']['per_subject'][a])} ({pct(r['shuffled']['per_subject'][a])})"
                                           for a in attributes) + " |" for label, r in translated]
    ablation = root / RUNGS[3][1]
    if read_jsonl(ablation / BENCH / "c2c-translated.jsonl"):
        change = paired_difference(records(ablation, "c2c-translated"), records(root, "c2c-translated"))
        lines += ["", f"Ablation - shipped translator, paired on the same items: {paired_text(change)} points "
                      f"({change['n']} items)."]
    (root / "ladder.md").write_text("\n".join(lines) + "\n")
    (root / "targets.json").write_text(json.dumps(
        {"benchmark": BENCH, "chance": round(default["chance"], 4), "targets": targets,
         "gap_closed": {label: round(r["gap_closed"], 4) for label, r in rows.items()}}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/context_handoff"))
