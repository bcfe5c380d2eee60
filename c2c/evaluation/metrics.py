"""Summaries of an evaluation's per-item records: accuracy with Wilson intervals, latency, F1, a Markdown table
with the paired differences (the communication gain when the baseline is the shuffled-sharer control) and
agreement, a plot. The statistics themselves are ``core.stats``."""

from __future__ import annotations

import statistics
from pathlib import Path

from ..core.stats import mean_interval, paired_text, wilson


def summarize(records: list[dict]) -> dict:
    """Accuracy with its interval, and latency over the items run one at a time (``latency_n`` of them):
    an item scored in a batch (``batch``), or whose t2t sharer text was written in one (``sharer_batch``), has no
    single-request latency, only a share of its batch's time."""
    n = len(records)
    correct = sum(r["correct"] for r in records)
    latencies = sorted(r["latency_ms"] for r in records if r.get("batch", 1) == r.get("sharer_batch", 1) == 1)
    subjects: dict[str, list[bool]] = {}
    for r in records:
        subjects.setdefault(r["subject"] or "all", []).append(r["correct"])
    return {"n": n, "accuracy": round(correct / n, 4) if n else 0.0, "ci95": wilson(correct, n),
            "latency_n": len(latencies),
            "latency_ms_mean": round(statistics.fmean(latencies), 2) if latencies else None,
            "latency_ms_p50": _quantile(latencies, 0.5), "latency_ms_p90": _quantile(latencies, 0.9),
            "per_subject": {s: round(sum(v) / len(v), 4) for s, v in sorted(subjects.items())} if len(subjects) > 1
            else None}


def summarize_free(records: list[dict]) -> dict:
    """Free-text scores (``evaluation.answers``): exact match, answer recall and, on synthetic items, the generation
    score, each with a Wilson interval; F1 (continuous) with a normal-approximation interval on its mean, clipped to
    [0, 1]; F1 per subject (SQuAD: per question type)."""
    n = len(records)
    result = {}
    for key in ("exact_match", "f1", "recall", "generation"):
        if not records or any(key not in r for r in records):
            continue
        values = [float(r[key]) for r in records]
        result[key] = round(statistics.fmean(values), 4)
        interval = mean_interval(values)
        result[f"{key}_ci95"] = wilson(int(sum(values)), n) if key != "f1" else \
            None if interval is None else [max(interval[0], 0.0), min(interval[1], 1.0)]
    subjects: dict[str, list[float]] = {}
    for r in records:
        subjects.setdefault(r["subject"] or "all", []).append(r["f1"])
    result["per_subject_f1"] = {s: round(statistics.fmean(v), 4) for s, v in sorted(subjects.items())} \
        if len(subjects) > 1 else None
    return result


def _quantile(values: list[float], q: float) -> float | None:
    return round(values[min(int(q * len(values)), len(values) - 1)], 2) if values else None


def _timing(result: dict) -> str:
    latency = result["latency_ms_mean"]
    timing = "batched" if latency is None else f"{latency:.0f} ms"
    if latency is not None and result.get("latency_n", result["n"]) < result["n"]:
        timing += f" (n={result['latency_n']})"
    return timing


def _percent(value: float, interval: list[float] | None) -> str:
    return f"{100 * value:.1f}" + (f" [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]" if interval else "")


def _paired_lines(summary: dict, names: list[str], key: str, caption: str) -> list[str]:
    """A table of the paired differences under ``summary["benchmarks"][name][key]``, one column per benchmark."""
    comparisons = list(dict.fromkeys(c for b in summary["benchmarks"].values() for c in b.get(key, {})))
    if not comparisons:
        return []
    lines = ["", caption, "", "| difference | " + " | ".join(names) + " | mean |", "|---|" + "---|" * (len(names) + 1)]
    for comparison in comparisons:
        cells, differences = [], []
        for name in names:
            result = summary["benchmarks"][name].get(key, {}).get(comparison)
            if result is None or result["difference"] is None:
                cells.append("-")
                continue
            differences.append(result["difference"])
            cells.append(f"{paired_text(result)} ({result['n']})")
        mean = f"{100 * statistics.fmean(differences):+.1f}" if differences else "-"
        lines.append(f"| {comparison} | " + " | ".join(cells) + f" | {mean} |")
    return lines


def _split_text(summary: dict) -> str:
    """The split the items came from: the run's, unless benchmarks overrode it (``NAME:SPLIT``)."""
    splits = {name: b.get("split", summary["split"]) for name, b in summary["benchmarks"].items()}
    if set(splits.values()) <= {summary["split"]}:
        return f"split `{summary['split']}`"
    if len(set(splits.values())) == 1:
        return f"split `{next(iter(splits.values()))}`"
    return "splits " + ", ".join(f"{name} `{split}`" for name, split in splits.items())


def markdown_table(summary: dict) -> str:
    if summary["scoring"] == "free":
        return free_text_table(summary)
    names = list(summary["benchmarks"])
    methods = list(dict.fromkeys(m for b in summary["benchmarks"].values() for m in b["methods"]))
    lines = [f"Scoring: `{summary['scoring']}`, {_split_text(summary)}, t2t sharer budget "
             f"{summary['t2t_tokens']} new tokens. Accuracy % [95% CI], mean latency per item (ms, batch 1).", "",
             "| method | " + " | ".join(f"{n} (n={summary['benchmarks'][n]['n']})" for n in names) + " | mean |",
             "|---|" + "---|" * (len(names) + 1)]
    for method in methods:
        cells, accuracies = [], []
        for name in names:
            result = summary["benchmarks"][name]["methods"].get(method)
            if result is None:
                cells.append("-")
                continue
            accuracies.append(result["accuracy"])
            cells.append(f"{_percent(result['accuracy'], result['ci95'])}, {_timing(result)}")
        mean = f"{100 * statistics.fmean(accuracies):.1f}" if accuracies else "-"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {mean} |")
    lines += _paired_lines(summary, names, "paired", "Paired differences on the same items, accuracy points [95% CI] "
                           "(n); `c2c - c2c-shuffled` is the communication gain.")
    agreeing = list(dict.fromkeys(m for b in summary["benchmarks"].values() for m in b.get("agreement_with_sharer", {})))
    if agreeing:
        lines += ["", "Agreement with the sharer's own pick, % of items [95% CI].", "",
                  "| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for method in agreeing:
            cells = []
            for name in names:
                result = summary["benchmarks"][name].get("agreement_with_sharer", {}).get(method)
                ok = result is not None and result["agreement"] is not None
                cells.append(_percent(result["agreement"], result["ci95"]) if ok else "-")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


FREE_COLUMNS = {"exact_match": "exact match", "f1": "F1", "recall": "answer recall", "generation": "generation"}


def free_text_table(summary: dict) -> str:
    """Markdown for ``--scoring free``: per benchmark, each method's exact match, F1, answer recall (and the
    generation score) with 95% intervals and latency; then the paired differences in F1 (and generation)."""
    names = list(summary["benchmarks"])
    lines = [f"Scoring: `free`, {_split_text(summary)}: a greedy answer of up to {summary['max_new_tokens']} new "
             "tokens, its short answer scored by SQuAD's exact match, F1 and answer recall (a reference appears in "
             "it), the best over all references; generation (synthetic tasks): the answer names the right value and "
             "no other value of its attribute. % [95% CI: Wilson; F1 a normal approximation on the mean], mean "
             "latency per item (ms, batch 1)."]
    for name in names:
        benchmark = summary["benchmarks"][name]
        columns = [c for c in FREE_COLUMNS if any(c in r for r in benchmark["methods"].values())]
        lines += ["", f"{name} (n={benchmark['n']}):", "",
                  "| method | " + " | ".join(FREE_COLUMNS[c] for c in columns) + " | latency |",
                  "|---|" + "---|" * (len(columns) + 1)]
        for method, result in benchmark["methods"].items():
            cells = [_percent(result[c], result[f"{c}_ci95"]) if c in result else "-" for c in columns]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {_timing(result)} |")
    lines += _paired_lines(summary, names, "paired", "Paired differences on the same items, F1 points [95% CI] (n); "
                           "`c2c-translated - c2c-translated-shuffled` is the communication gain.")
    lines += _paired_lines(summary, names, "paired_generation",
                           "Paired differences on the same items, generation score points [95% CI] (n).")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(summary["benchmarks"])
    figure, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 4), squeeze=False)
    metric = "f1" if summary["scoring"] == "free" else "accuracy"
    for axis, name in zip(axes[0], names):
        for method, result in summary["benchmarks"][name]["methods"].items():
            if result["latency_ms_mean"] is None:
                continue
            axis.scatter(result["latency_ms_mean"], 100 * result[metric], label=method)
            axis.annotate(method, (result["latency_ms_mean"], 100 * result[metric]), fontsize=7)
        axis.set(title=f"{name} ({summary['scoring']})", xlabel="mean latency per item (ms)",
                 ylabel="F1 (%)" if metric == "f1" else "accuracy (%)")
        axis.set_xscale("log")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
