"""Issue 30's tables, targets and plot, read from the per-item records and summaries that `c2c eval` wrote under
`results/context_handoff/trained/` (see `benchmarks/context_handoff_trained.sh`).

    python benchmarks/context_handoff_trained_table.py [results/context_handoff/trained]

Writes beside them: `dev.md` (the choice among the translators, dev items only), `table.md` (test items: every
method, the share of the gap closed with a bootstrap interval, per attribute / question type), `targets.json` and
`gap_closed.png`. The gap closed is (channel - receiver) / (receiver-with-context - receiver) on the same items;
its 95% interval resamples the items (2,000 draws, seed 0). The closed-form (ridge) translator's test records are
those of `results/context_handoff/` (cloze, the same 500 seeded items) and `test/free_ridge/`.
"""
from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from c2c.core.stats import paired_text  # noqa: E402
from c2c.core.runlog import read_jsonl, training_minutes  # noqa: E402

RIDGE_CLOZE = Path("results/context_handoff")
TRANSLATORS = {"ridge": "closed-form (ridge) maps", "distill": "phase 2, synthetic facts (320 steps)",
               "distill_squad": "phase 2 continued on SQuAD train articles + synthetic (160 more steps)"}
RUNS = {"distill": "runs/context_handoff_distill", "distill_squad": "runs/context_handoff_distill_squad"}
CLOZE, FREE = ("synthetic-1fact", "synthetic-3fact"), ("synthetic-1fact", "squad")
METHODS = ("receiver", "receiver-with-context", "c2c-translated", "c2c-translated-shuffled", "t2t", "lora-receiver")


def records(folder: Path, bench: str, method: str) -> dict[str, dict]:
    path = folder / bench / f"{method}.jsonl"
    return {r["id"]: r for r in read_jsonl(path)}


def score(record: dict, key: str) -> float:
    return float(record[key])


def bootstrap(rows: list, statistic, draws: int) -> list[float]:
    """A 95% interval of ``statistic`` over the items, resampling them with replacement (seed 0)."""
    rng = random.Random(0)
    values = sorted(statistic([rng.choice(rows) for _ in rows]) for _ in range(draws))
    return [round(values[int(0.025 * draws)], 4), round(values[int(0.975 * draws) - 1], 4)]


def gap_closed(folder: Path, bench: str, key: str, channel_folder: Path | None = None, draws: int = 2000) -> dict:
    """(channel - receiver) / (with context - receiver) over the items all three have, with a bootstrap interval."""
    receiver, ceiling = records(folder, bench, "receiver"), records(folder, bench, "receiver-with-context")
    channel = records(channel_folder or folder, bench, "c2c-translated")
    ids = sorted(set(receiver) & set(ceiling) & set(channel))
    if not ids:
        return {"n": 0, "closed": None, "ci95": None}
    rows = [(score(receiver[i], key), score(ceiling[i], key), score(channel[i], key)) for i in ids]

    def ratio(sample):
        r, c, t = (sum(column) for column in zip(*sample))
        return (t - r) / (c - r) if c != r else float("nan")
    return {"n": len(ids), "closed": round(ratio(rows), 4), "ci95": bootstrap(rows, ratio, draws)}


def stated_share(folder: Path, bench: str = "synthetic-1fact", draws: int = 2000) -> dict:
    """Of the items where the receiver reading the text states the fact (generation score 1), the share where the
    translated context does too."""
    ceiling, channel = records(folder, bench, "receiver-with-context"), records(folder, bench, "c2c-translated")
    rows = [bool(channel[i]["generation"]) for i in ceiling if i in channel and ceiling[i]["generation"]]
    if not rows:
        return {"n": 0, "share": None, "ci95": None}
    return {"n": len(rows), "share": round(sum(rows) / len(rows), 4),
            "ci95": bootstrap(rows, lambda sample: sum(sample) / len(sample), draws)}


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def interval(result: dict, value: str) -> str:
    return "-" if result.get(value) is None else f"{pct(result[value])}% [{pct(result['ci95'][0])}, {pct(result['ci95'][1])}]"


def summary(folder: Path) -> dict:
    path = folder / "summary.json"
    return json.loads(path.read_text())["benchmarks"] if path.is_file() else {}


def dev_table(root: Path) -> list[str]:
    lines = ["Dev items only (`synthetic-*fact` dev split, names and values unseen in any fit; SQuAD dev articles): "
             "accuracy (cloze) or F1 (free) of the translated context, and the share of the gap it closes "
             "[bootstrap 95% CI].", "",
             "| translator | phase-2 minutes (this run) | synthetic-1fact cloze | synthetic-3fact cloze | squad F1 |",
             "|---|---|---|---|---|"]
    for name, label in TRANSLATORS.items():
        cells = []
        for scoring, bench, key in (("cloze", "synthetic-1fact", "correct"), ("cloze", "synthetic-3fact", "correct"),
                                    ("free", "squad", "f1")):
            folder = root / "dev" / name / scoring
            methods = summary(folder).get(bench, {}).get("methods", {})
            value = methods.get("c2c-translated", {}).get("f1" if key == "f1" else "accuracy")
            cells.append("-" if value is None else f"{pct(value)} ({interval(gap_closed(folder, bench, key), 'closed')})")
        minutes = training_minutes(RUNS[name]) if name in RUNS and Path(RUNS[name]).is_dir() else "-"
        lines.append(f"| {label} | {minutes} | " + " | ".join(cells) + " |")
    return lines + [""]


def method_cell(methods: dict, method: str, key: str) -> str:
    entry = methods.get(method)
    if not entry:
        return "-"
    if key == "f1":
        return f"{pct(entry['f1'])} [{pct(entry['f1_ci95'][0])}, {pct(entry['f1_ci95'][1])}] (EM {pct(entry['exact_match'])}), {entry['latency_ms_mean']:.0f} ms"
    value, ci = (entry["generation"], entry["generation_ci95"]) if key == "generation" else (entry["accuracy"], entry["ci95"])
    return f"{pct(value)} [{pct(ci[0])}, {pct(ci[1])}], {entry['latency_ms_mean']:.0f} ms"


def test_tables(root: Path) -> tuple[list[str], dict]:
    cloze, free, free_ridge = root / "test" / "cloze", root / "test" / "free", root / "test" / "free_ridge"
    columns = [("cloze", cloze, bench, "correct") for bench in CLOZE] + \
              [("free", free, "synthetic-1fact", "generation"), ("free", free, "squad", "f1")]
    titles = ["synthetic-1fact (cloze, accuracy)", "synthetic-3fact (cloze, accuracy)",
              "synthetic-1fact (free, generation score)", "squad (free, F1)"]
    lines = ["Test items that no fit, training or choice saw. Accuracy / score % [95% CI], mean latency per item "
             "(batch 1, one CPU thread; two evaluations ran side by side, so compare latencies within a column).", "",
             "| method | " + " | ".join(f"{t} (n)" for t in titles) + " |", "|---" * (len(titles) + 1) + "|"]
    sums = {scoring_folder: summary(scoring_folder) for scoring_folder in (cloze, free, free_ridge, RIDGE_CLOZE)}
    for method in METHODS:
        cells = []
        for _, folder, bench, key in columns:
            methods = sums[folder].get(bench, {}).get("methods", {})
            cells.append(method_cell(methods, method, key) + (f" ({methods[method]['n']})" if method in methods else ""))
        label = "c2c-translated (trained)" if method == "c2c-translated" else method
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ridge_cells = []
    for _, folder, bench, key in columns:
        source = RIDGE_CLOZE if folder == cloze else free_ridge
        ridge_cells.append(method_cell(sums[source].get(bench, {}).get("methods", {}), "c2c-translated", key))
    lines.append("| c2c-translated (closed-form ridge, before phase 2) | " + " | ".join(ridge_cells) + " |")
    lines += ["", "Gap closed, (channel - receiver) / (receiver-with-context - receiver) [bootstrap 95% CI], and the "
              "communication gain, channel - its shuffled control (paired, points [95% CI]):", "",
              "| translator | " + " | ".join(titles) + " |", "|---" * (len(titles) + 1) + "|"]
    results = {}
    for name, channel_of in (("trained", lambda folder: folder), ("ridge", lambda folder: RIDGE_CLOZE if folder == cloze
                                                                   else free_ridge)):
        cells = []
        for (_, folder, bench, key), title in zip(columns, titles):
            closed = gap_closed(folder, bench, key, channel_of(folder))
            paired = summary(channel_of(folder)).get(bench, {})
            gain = (paired.get("paired_generation") if key == "generation" else paired.get("paired", {})) or {}
            gain = gain.get("c2c-translated - c2c-translated-shuffled")
            results.setdefault(name, {})[title] = {"gap_closed": closed, "gain": gain}
            cells.append(f"{interval(closed, 'closed')}, gain {paired_text(gain) if gain else '-'}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""], results


def breakdowns(root: Path) -> list[str]:
    lines = []
    for scoring, bench, key, what in (("cloze", "synthetic-1fact", "correct", "attribute"),
                                      ("cloze", "synthetic-3fact", "correct", "attribute"),
                                      ("free", "squad", "f1", "question type")):
        folder = root / "test" / scoring
        per = {m: records(folder, bench, m) for m in ("receiver", "receiver-with-context", "c2c-translated",
                                                      "c2c-translated-shuffled")}
        if not per["c2c-translated"]:
            continue
        subjects = sorted({r["subject"] or "all" for r in per["c2c-translated"].values()})
        lines += [f"{bench} ({scoring}) by {what}: {'F1' if key == 'f1' else 'accuracy'} %, trained translator "
                  "(n per row):", "", "| " + what + " | n | receiver | receiver-with-context | c2c-translated | "
                  "shuffled |", "|---|---|---|---|---|---|"]
        for subject in subjects:
            ids = [i for i, r in per["c2c-translated"].items() if (r["subject"] or "all") == subject]
            cells = [pct(sum(score(per[m][i], key) for i in ids if i in per[m]) / max(sum(i in per[m] for i in ids), 1))
                     if per[m] else "-" for m in per]
            lines.append(f"| {subject} | {len(ids)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def token_breakdown(root: Path) -> list[str]:
    """The synthetic free-text generation score by how many tokens the right value takes for each model, over the
    items where the receiver reading the text states it: a translated section has one position per sharer token."""
    from c2c.core.models import load_model
    tokenizers = {role: load_model(spec).tokenizer for role, spec in (("receiver", "smollm2-135m-instruct"),
                                                                       ("sharer", "gemma3-270m"))}
    folder = root / "test" / "free"
    ceiling, channel = records(folder, "synthetic-1fact", "receiver-with-context"), \
        records(folder, "synthetic-1fact", "c2c-translated")
    groups: dict[str, list[bool]] = {}
    for item, record in channel.items():
        if not ceiling.get(item, {}).get("generation"):
            continue
        counts = {role: len(t(" " + record["gold"][0], add_special_tokens=False)["input_ids"])
                  for role, t in tokenizers.items()}
        key = ", ".join(f"{role} {'1 token' if n == 1 else '2+ tokens'}" for role, n in counts.items())
        groups.setdefault(key, []).append(bool(record["generation"]))
    lines = ["synthetic-1fact (free): the trained translator states the right value, by the value's token count "
             "(items where the receiver reading the text states it):", "", "| value tokens | n | stated % |",
             "|---|---|---|"]
    lines += [f"| {key} | {len(v)} | {pct(sum(v) / len(v))} |" for key, v in sorted(groups.items())]
    return lines + [""]


def plot(results: dict, path: Path) -> None:
    titles = list(next(iter(results.values())))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(results)
    for k, (name, by_title) in enumerate(results.items()):
        values = [by_title[t]["gap_closed"]["closed"] or 0 for t in titles]
        errors = [[v - (by_title[t]["gap_closed"]["ci95"] or [v, v])[0] for v, t in zip(values, titles)],
                  [(by_title[t]["gap_closed"]["ci95"] or [v, v])[1] - v for v, t in zip(values, titles)]]
        ax.bar([i + k * width for i in range(len(titles))], values, width, yerr=errors, label=f"{name} translator")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks([i + width * (len(results) - 1) / 2 for i in range(len(titles))],
                  [t.replace(" (", "\n(") for t in titles], fontsize=8)
    ax.set_ylabel("share of the gap closed\n(receiver -> reading the text)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def targets(results: dict, root: Path) -> dict:
    trained = results["trained"]
    titles = list(trained)
    squad = trained[titles[3]]
    stated = stated_share(root / "test" / "free")
    checks = {
        "synthetic-1fact cloze gap closed >= 90%": (trained[titles[0]]["gap_closed"], 0.90),
        "synthetic-3fact cloze gap closed >= 75%": (trained[titles[1]]["gap_closed"], 0.75),
        "squad F1 gap closed >= 60%": (squad["gap_closed"], 0.60)}
    out = {name: {**value, "target": target, "met": value["closed"] is not None and value["closed"] >= target}
           for name, (value, target) in checks.items()}
    out["generation: states the fact in >= 80% of the items the receiver reading the text does"] = {
        **stated, "target": 0.8, "met": stated["share"] is not None and stated["share"] >= 0.8}
    gain = squad["gain"] or {}
    out["squad F1 above its shuffled control (paired CI above 0)"] = {
        **gain, "met": bool(gain.get("ci95")) and gain["ci95"][0] > 0}
    out["training minutes"] = {name: training_minutes(run) for name, run in RUNS.items() if Path(run).is_dir()}
    return out


def main(root: Path) -> None:
    test_lines, results = test_tables(root)
    (root / "dev.md").write_text("\n".join(dev_table(root)))
    (root / "table.md").write_text("\n".join(test_lines + breakdowns(root) + token_breakdown(root)))
    (root / "targets.json").write_text(json.dumps(targets(results, root), indent=2) + "\n")
    plot(results, root / "gap_closed.png")
    print((root / "dev.md").read_text(), (root / "table.md").read_text(), (root / "targets.json").read_text(), sep="\n")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "results/context_handoff/trained"))
