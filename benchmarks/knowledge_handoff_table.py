"""Knowledge handoff (issue 34): the tables and the targets, from what benchmarks/knowledge_handoff.sh wrote.

    python benchmarks/knowledge_handoff_table.py [results/knowledge_handoff]

Reads `eval/summary.json` and its per-item records (`c2c eval`, both test sets), `cloze_*.json`
(the cloze probe), `probe/probe.json` (the K/V probe) and `scale/*/` (c2c and c2c-shuffled of the scaling runs,
on the same items as `eval`), and writes `table.md` and `knowledge.json`: accuracy per method and test set, the
communication gain (c2c - c2c-shuffled, paired), the share of the receiver -> sharer gap c2c closes
(`core.stats.gap_closed`), the LoRA receiver against chance, the one-change variants (`VARIANTS`: position-free
keys, reading one sharer token ahead, the receiver's own model taught as the sharer), the probe's best layers, the
scaling rows, and each of the issue's targets met or not. A step not yet run is left out.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from c2c.core.runlog import read_jsonl
from c2c.core.stats import gap_closed, paired_difference, paired_text

TESTS = ("held_out", "novel_values")
METHODS = ("receiver", "sharer", "c2c", "c2c-shuffled", "lora-receiver", "t2t", "routing-oracle")
SCALE = {  # scaling run -> (fuser_train questions it trained on, the fuser's hidden and intermediate size)
    "n250": (250, 128), "n500": (500, 128), "n1000": (1000, 128), "full": (1936, 128),
    "h32": (1936, 32), "h512": (1936, 512)}
VARIANTS = {  # folder -> title: the main fuser's recipe with one change (recipes/knowledge_handoff/<folder>.yaml)
    "position_free": "The position-free fuser",
    "ahead": "Reading one sharer token ahead (`offsets_ahead`; not the paper's protocol)",
    "self": "Diagnostic: the receiver's own model, taught the encyclopedia, as the sharer",
    "self_ahead": "Diagnostic: the receiver's own model as the sharer, reading one token ahead"}
CLOZE_MODELS = {"sharer": "sharer (Gemma, built)", "receiver": "receiver",
                "self_sharer": "receiver's own model, taught (the diagnostic's sharer)"}


def by_id(records: list[dict]) -> dict[str, float]:
    return {r["id"]: float(r["correct"]) for r in records}


def scores(folder: Path, bench: str, method: str) -> dict[str, float]:
    return by_id(read_jsonl(folder / bench / f"{method}.jsonl"))


def picks(records: list[dict]) -> dict[str, int]:
    return {r["id"]: r["prediction"] for r in records}


def same_picks(a: dict[str, int], b: dict[str, int]) -> float:
    """The share of ``a``'s items on which ``b`` picks the same choice."""
    return round(sum(a[i] == b[i] for i in a) / len(a), 4)


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def share_text(gap: dict) -> str:
    if gap.get("gap_closed") is None:
        return "no gap"
    low, high = gap["ci95"]
    return f"{100 * gap['gap_closed']:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"


def communication(folder: Path, eval_folder: Path, bench: str) -> dict:
    """c2c, its gain over c2c-shuffled and over the receiver (paired), its sharer's accuracy, the share of the
    receiver -> sharer gap it closes, and how often it picks what c2c-shuffled, the receiver and the sharer pick.
    The sharer is the run's own where it scored one (a run with another sharer), else the main one."""
    c2c = read_jsonl(folder / bench / "c2c.jsonl")
    shuffled = read_jsonl(folder / bench / "c2c-shuffled.jsonl")
    c2c_scores = by_id(c2c)
    benches = json.loads((folder / "summary.json").read_text())["benchmarks"]
    sharer_records = read_jsonl((folder if "sharer" in benches[bench]["methods"] else eval_folder) / bench /
                                "sharer.jsonl")
    receiver_records = read_jsonl(eval_folder / bench / "receiver.jsonl")
    sharer = by_id(sharer_records)
    return {"n": len(c2c), "c2c": round(sum(c2c_scores.values()) / len(c2c), 4),
            "c2c-shuffled": round(sum(float(r["correct"]) for r in shuffled) / len(shuffled), 4),
            "sharer": round(sum(sharer.values()) / len(sharer), 4),
            "gain": paired_difference(c2c, shuffled),
            "c2c - receiver": paired_difference(c2c, receiver_records),
            "gap_closed": gap_closed(by_id(receiver_records), sharer, c2c_scores),
            # does what the fuser writes depend on what the sharer read? (the same pick as ...)
            "c2c picks as": {name: same_picks(picks(c2c), picks(records)) for name, records in
                             (("c2c-shuffled", shuffled), ("receiver", receiver_records), ("sharer", sharer_records))}}


def picks_text(row: dict) -> str:
    return ", ".join(f"{name} {pct(share)}%" for name, share in row["c2c picks as"].items())


def cloze_lines(root: Path) -> tuple[list[str], dict]:
    found = {who: json.loads((root / f"cloze_{who}.json").read_text()) for who in CLOZE_MODELS
             if (root / f"cloze_{who}.json").is_file()}
    if not found:
        return [], {}
    sets = list(next(iter(found.values()))["sets"])
    lines = ["## Who knows what (cloze probe, each model alone)", "",
             f"Accuracy on {next(iter(found.values()))['limit']} questions a set (chance 25%), 95% Wilson interval.",
             "", "| model | " + " | ".join(sets) + " |", "|---|" + "---:|" * len(sets)]
    for who, result in found.items():
        cells = [f"{pct(s['accuracy'])} [{pct(s['ci95'][0])}, {pct(s['ci95'][1])}]" for s in result["sets"].values()]
        lines.append(f"| {CLOZE_MODELS[who]} | " + " | ".join(cells) + " |")
    return lines + [""], {who: {s: r["accuracy"] for s, r in result["sets"].items()} for who, result in found.items()}


def probe_lines(root: Path) -> tuple[list[str], dict]:
    """The K/V probe's best layers: `probe/` (the sharer and the receiver), then `self_probe/` (the diagnostic's
    taught receiver), where it ran."""
    paths = [root / folder / "probe.json" for folder in ("probe", "self_probe") if (root / folder / "probe.json").is_file()]
    if not paths:
        return [], {}
    results = [json.loads(path.read_text()) for path in paths]
    result = results[0]
    lines = ["## Where the knowledge lives (K/V probe)", "",
             "Ridge probe per layer on each model's K/V, at the question's tokens (last, mean), at the last position a "
             "fuser writes (fused_end) and at the prompt's last token (prompt_end, never fused); fitted on "
             f"{result['train_set']}, "
             f"scored on {result['test_set']} ({result['n_test']} questions); accuracy among the attribute's values "
             f"(chance {pct(result['chance']['accuracy'])}) and among the question's four choices (chance "
             f"{pct(result['chance']['choice_accuracy'])}). The best layer of each model and pooling; every layer is "
             "in `probe/probe.md` and `probe/probe.png` (`self_probe/` for the taught receiver).", "",
             "| model | pooling | best layer | accuracy | among choices |", "|---|---|---:|---:|---:|"]
    best = {}
    for label, model in ((label, model) for result in results for label, model in result["models"].items()):
        for pool in (key for key in model["layers"][0] if key != "layer"):
            row = max(model["layers"], key=lambda r: r[pool]["accuracy"])
            best[f"{label}/{pool}"] = {"layer": row["layer"], **{k: row[pool][k] for k in ("accuracy", "choice_accuracy")}}
            lines.append(f"| {label} | {pool} | {row['layer']} of {len(model['layers'])} | "
                         f"{pct(row[pool]['accuracy'])} | {pct(row[pool]['choice_accuracy'])} |")
    return lines + [""], best


def plot_scale(scale: dict, path: Path) -> None:
    """The gain (c2c - c2c-shuffled, with its paired interval) against training questions (width 128) and against
    the fuser's width (all questions), one line per test set."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for axis, (key, fixed, label) in zip(axes, (("questions", ("width", 128), "fuser_train questions"),
                                                ("width", ("questions", 1936), "fuser width (hidden = intermediate)"))):
        for bench in TESTS:
            rows = sorted((run[key], run[bench]["gain"]) for run in scale.values()
                          if run[fixed[0]] == fixed[1] and bench in run)
            if not rows:
                continue
            x = [r[0] for r in rows]
            y = [100 * r[1]["difference"] for r in rows]
            error = [[100 * (r[1]["difference"] - r[1]["ci95"][0]) for r in rows],
                     [100 * (r[1]["ci95"][1] - r[1]["difference"]) for r in rows]]
            axis.errorbar(x, y, yerr=error, marker="o", capsize=3, label=bench)
        axis.axhline(0, color="grey", linestyle=":")
        axis.set_xscale("log")
        axis.set_xlabel(label)
    axes[0].set_ylabel("c2c - c2c-shuffled (points)")
    axes[0].legend(fontsize=8)
    figure.suptitle("Does the communication gain grow with data or fuser size?", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(root: Path) -> None:
    out: dict = {"scoring": "cloze", "tests": {}, "scale": {}, "targets": {}}
    lines = ["# Knowledge handoff: the tables (written by benchmarks/knowledge_handoff_table.py)", ""]
    more, out["cloze"] = cloze_lines(root)
    lines += more
    more, out["probe_best"] = probe_lines(root)
    lines += more
    evaluation = root / "eval"
    if (evaluation / "summary.json").is_file():
        summary = json.loads((evaluation / "summary.json").read_text())
        lines += ["## The paper's channel: both models read the question alone", "",
                  "Cloze accuracy (95% Wilson interval); gain = c2c - c2c-shuffled and c2c - receiver, paired on the "
                  "same items; gap closed = (c2c - receiver) / (sharer - receiver), 95% interval resampling items.", ""]
        for bench in TESTS:
            if bench not in summary["benchmarks"]:
                continue
            methods = summary["benchmarks"][bench]["methods"]
            chance = 0.25
            row = communication(evaluation, evaluation, bench)
            lora = methods.get("lora-receiver")
            row["accuracy"] = {m: methods[m]["accuracy"] for m in METHODS if m in methods}
            row["ci95"] = {m: methods[m]["ci95"] for m in METHODS if m in methods}
            out["tests"][bench] = row
            lines += [f"### {bench} (n = {row['n']})", "", "| method | accuracy |", "|---|---:|"]
            lines += [f"| {m} | {pct(row['accuracy'][m])} [{pct(row['ci95'][m][0])}, {pct(row['ci95'][m][1])}] |"
                      for m in row["accuracy"]]
            lines += ["", f"- c2c - c2c-shuffled: {paired_text(row['gain'])}",
                      f"- c2c - receiver: {paired_text(row['c2c - receiver'])}",
                      f"- gap closed: {share_text(row['gap_closed'])}",
                      f"- c2c picks as (the same choice on this share of items): {picks_text(row)}", ""]
            if bench == "held_out":
                out["targets"] = {
                    "c2c - c2c-shuffled above 0 (held_out)": row["gain"]["ci95"][0] > 0,
                    "c2c closes >= 50% of the receiver -> sharer gap (held_out)":
                        (row["gap_closed"].get("gap_closed") or 0) >= 0.5,
                    "lora-receiver within its interval of chance (held_out)":
                        lora is not None and lora["ci95"][0] <= chance <= lora["ci95"][1]}
        for variant, title in VARIANTS.items():  # the main fuser's recipe with one change each
            if not (root / variant / "summary.json").is_file():
                continue
            lines += [f"### {title} (`{variant}/`)", "",
                      "| test | sharer | c2c | c2c-shuffled | gain | gap closed | c2c picks as |",
                      "|---|---:|---:|---:|---|---|---|"]
            benches = json.loads((root / variant / "summary.json").read_text())["benchmarks"]
            for bench in (b for b in TESTS if b in benches):
                row = out.setdefault(variant, {})[bench] = communication(root / variant, evaluation, bench)
                lines.append(f"| {bench} | {pct(row['sharer'])} | {pct(row['c2c'])} | {pct(row['c2c-shuffled'])} | "
                             f"{paired_text(row['gain'])} | {share_text(row['gap_closed'])} | {picks_text(row)} |")
            lines.append("")
        scale_rows = {"full": evaluation, **{name: root / "scale" / name for name in SCALE
                                             if (root / "scale" / name / "summary.json").is_file()}}
        lines += ["## Scale of the claim: the gain against training questions and fuser size", "",
                  "Every row on the same test items; receiver and sharer from the main evaluation. The plot is "
                  "`scale.png`.", "",
                  "| run | fuser_train questions | fuser width | test | c2c | c2c-shuffled | gain | gap closed |",
                  "|---|---:|---:|---|---:|---:|---|---|"]
        for name in sorted(scale_rows, key=lambda n: SCALE[n]):
            questions, width = SCALE[name]
            benches = json.loads((scale_rows[name] / "summary.json").read_text())["benchmarks"]
            for bench in (b for b in TESTS if b in benches):
                row = communication(scale_rows[name], evaluation, bench)
                out["scale"].setdefault(name, {"questions": questions, "width": width})[bench] = row
                lines.append(f"| {name} | {questions} | {width} | {bench} | {pct(row['c2c'])} | "
                             f"{pct(row['c2c-shuffled'])} | {paired_text(row['gain'])} | "
                             f"{share_text(row['gap_closed'])} |")
        plot_scale(out["scale"], root / "scale.png")
        lines.append("")
    if out["targets"]:
        lines += ["## The issue's targets", ""] + [f"- {name}: **{'met' if met else 'missed'}**"
                                                   for name, met in out["targets"].items()] + [""]
    (root / "table.md").write_text("\n".join(lines))
    (root / "knowledge.json").write_text(json.dumps(out, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/knowledge_handoff"))
