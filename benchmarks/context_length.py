"""Issue 32's length study: how much of the gap between the receiver alone and the receiver reading the text the
translated channel closes as its context grows.

    python benchmarks/context_length.py data  [--squad FILE] [--out DIR]   # the long-context SQuAD files
    python benchmarks/context_length.py table [--out DIR]                  # length.json, length.md, length.png

``data`` writes one official-format SQuAD file per length (``inputs/squad_<length>.json``): the same questions each
time, their paragraph placed among its article's neighbouring paragraphs (it grows by whole paragraphs, on a
seeded side each step, so a shorter context is part of every longer one) up to about 512, 1,024, 2,048 and 4,096
receiver tokens, and the paragraph alone (``squad_paragraph.json``). Dev-split articles only (the test split
stays untouched); questions share their context, so that a translated reading is made once per context.
It also writes ``inputs/needle_<length>.jsonl``: a synthetic dev fact ("Mira's pet is a dog.") and its three-choice
question, the fact hidden among dev articles' paragraphs at a seeded place, the whole about 512 to 4,096 receiver
tokens (``needle_0``: the fact alone). ``benchmarks/context_length.sh`` runs ``c2c eval`` on them (SQuAD: free
text, F1; needles: cloze) and on synthetic contexts of 1 to 64 facts (cloze); ``table`` reads the per-item records
it wrote.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from c2c.core.stats import gap_closed

LENGTHS = {"paragraph": 0, "512": 512, "1024": 1024, "2048": 2048, "4096": 4096}  # receiver tokens, at most
NEEDLES = (0, 512, 1024, 2048, 4096)
TRAIN_LENGTHS = (512, 1024, 2048)  # phase 2's long contexts: each one's limit drawn from these
FACTS = (1, 4, 16, 64)
OUT = Path("results/context_handoff/length")


def squad_articles(path: Path, split: str) -> dict[str, list[dict]]:
    """Each article of ``split`` (c2c's split by sorted title): its paragraphs, with their questions."""
    from c2c.data.squad import article_splits
    articles = json.loads(path.read_text())["data"]
    splits = article_splits(a["title"] for a in articles)
    return {a["title"]: a["paragraphs"] for a in articles if splits[a["title"]] == split}


def grown_context(paragraphs: list[str], index: int, limit: int, count, rng: random.Random) -> str:
    """Paragraph ``index`` among its neighbours: one more paragraph at a time, before or after it (``rng``), while
    the text stays within ``limit`` tokens (``count``); the paragraph alone when ``limit`` is 0."""
    low = high = index
    while limit:
        sides = [side for side, ok in (("before", low > 0), ("after", high < len(paragraphs) - 1)) if ok]
        if not sides:
            break
        side = rng.choice(sides)
        new_low, new_high = (low - 1, high) if side == "before" else (low, high + 1)
        if count("\n\n".join(paragraphs[new_low:new_high + 1])) > limit:
            break
        low, high = new_low, new_high
    return "\n\n".join(paragraphs[low:high + 1])


def hidden_fact(fact: str, paragraphs: list[str], limit: int, count, rng: random.Random) -> str:
    """``fact`` among consecutive ``paragraphs`` (from a seeded start, wrapping), the whole within ``limit`` tokens,
    at a seeded place between them; the fact alone when ``limit`` is 0."""
    start, chosen = rng.randrange(len(paragraphs)), []
    while limit and len(chosen) < len(paragraphs):
        candidate = paragraphs[(start + len(chosen)) % len(paragraphs)]
        if count("\n\n".join([fact, *chosen, candidate])) > limit:
            break
        chosen.append(candidate)
    place = rng.randint(0, len(chosen))
    return "\n\n".join(chosen[:place] + [fact] + chosen[place:])


def needle_rows(facts: list[dict], articles: dict[str, list[dict]], titles: list[str], limits: list[int], count,
                seed: int) -> tuple[list[str], list[int]]:
    """Each fact item hidden among the paragraphs of an article (``titles`` in turn) within its limit; the JSONL rows
    and their receiver token counts."""
    rows, lengths = [], []
    for index, (item, limit) in enumerate(zip(facts, limits)):
        paragraphs = [p["context"] for p in articles[titles[index % len(titles)]]]
        context = hidden_fact(item["context"], paragraphs, limit, count, random.Random(f"{seed}:{index}"))
        lengths.append(count(context))
        rows.append(json.dumps({**item, "id": f"needle-{index}", "context": context}))
    return rows, lengths


def sizes(lengths: list[int]) -> dict:
    return {"items": len(lengths), "mean_receiver_tokens": round(sum(lengths) / len(lengths)),
            "max_receiver_tokens": max(lengths)}


def write_needles(articles: dict[str, list[dict]], titles: list[str], out: Path, items: int, count, seed: int) -> dict:
    from c2c.data.synthetic import synthetic_items
    facts = synthetic_items("dev", items, 1, seed)
    written = {}
    for limit in NEEDLES:
        rows, lengths = needle_rows(facts, articles, titles, [limit] * len(facts), count, seed)
        (out / "inputs" / f"needle_{limit}.jsonl").write_text("\n".join(rows) + "\n")
        written[str(limit)] = sizes(lengths)
    return written


def receiver_token_counter():
    from c2c.core.models import load_model
    tokenizer = load_model("smollm2-135m-instruct").tokenizer
    return lambda text: len(tokenizer(text)["input_ids"])


def long_articles(articles: dict[str, list[dict]], count, tokens: int = 5000) -> list[str]:
    """The titles of the articles whose paragraphs together exceed ``tokens`` (room for the longest context)."""
    return sorted(t for t, ps in articles.items() if count("\n\n".join(p["context"] for p in ps)) > tokens)


def paragraph_picks(articles: dict[str, list[dict]], titles: list[str], contexts: int, rng: random.Random) -> list:
    """``contexts`` distinct (title, paragraph index) pairs, the titles in turn."""
    picks = []
    while len(picks) < contexts:
        title = titles[len(picks) % len(titles)]
        index = rng.randrange(len(articles[title]))
        if (title, index) not in picks:
            picks.append((title, index))
    return picks


def write_data(squad: Path, out: Path, contexts: int, questions: int, needles: int, seed: int) -> None:
    count = receiver_token_counter()
    articles = squad_articles(squad, "dev")
    titles = long_articles(articles, count)
    picks = paragraph_picks(articles, titles, contexts, random.Random(seed))
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    lengths = {}
    for name, limit in LENGTHS.items():
        data, tokens = [], []
        for title, index in picks:
            paragraphs = [p["context"] for p in articles[title]]
            context = grown_context(paragraphs, index, limit, count, random.Random(f"{seed}:{title}:{index}"))
            tokens.append(count(context))
            qas = articles[title][index]["qas"][:questions]
            data.append({"title": title, "paragraphs": [{"context": context, "qas": qas}]})
        (out / "inputs" / f"squad_{name}.json").write_text(json.dumps({"version": "c2c-length-study", "data": data}) + "\n")
        lengths[name] = {"contexts": len(tokens), "questions": sum(len(d["paragraphs"][0]["qas"]) for d in data),
                         "mean_receiver_tokens": round(sum(tokens) / len(tokens)), "max_receiver_tokens": max(tokens)}
    needle_sizes = write_needles(articles, titles, out, needles, count, seed)
    (out / "data.json").write_text(json.dumps({"seed": seed, "split": "dev", "source": str(squad),
                                               "lengths": lengths, "needles": needle_sizes}, indent=2) + "\n")
    print(json.dumps({"squad": lengths, "needles": needle_sizes}, indent=2))


def write_train_data(squad: Path, out: Path, contexts: int, questions: int, needles: int, seed: int,
                     limits: tuple[int, ...] = TRAIN_LENGTHS) -> None:
    """Long-context training items for phase 2 from the train split (train articles, synthetic train facts): each
    context's length limit drawn from ``limits``. ``squad_train.json`` (official format) and ``needle_train.jsonl``."""
    from c2c.data.synthetic import synthetic_items
    count = receiver_token_counter()
    articles = squad_articles(squad, "train")
    titles = long_articles(articles, count, max(limits) + 500)
    rng = random.Random(f"train:{seed}")
    data, tokens = [], []
    for title, index in paragraph_picks(articles, titles, contexts, rng):
        paragraphs = [p["context"] for p in articles[title]]
        context = grown_context(paragraphs, index, rng.choice(limits), count, random.Random(f"{seed}:{title}:{index}"))
        tokens.append(count(context))
        data.append({"title": title, "paragraphs": [{"context": context, "qas": articles[title][index]["qas"][:questions]}]})
    out.mkdir(parents=True, exist_ok=True)
    (out / "squad_train.json").write_text(json.dumps({"version": "c2c-length-train", "data": data}) + "\n")
    facts = synthetic_items("train", needles, 1, seed)
    rows, needle_tokens = needle_rows(facts, articles, titles, [rng.choice(limits) for _ in facts], count, seed)
    (out / "needle_train.jsonl").write_text("\n".join(rows) + "\n")
    written = {"squad": {**sizes(tokens), "questions": sum(len(d["paragraphs"][0]["qas"]) for d in data)},
               "needles": sizes(needle_tokens), "limits": list(limits), "seed": seed, "split": "train"}
    (out / "train_data.json").write_text(json.dumps(written, indent=2) + "\n")
    print(json.dumps(written, indent=2))


# ------------------------------------------------------------------------------------------------ table
def records(folder: Path, method: str) -> dict[str, float]:
    from c2c.core.runlog import read_jsonl
    rows = read_jsonl(folder / f"{method}.jsonl")
    return {r["id"]: float(r["f1"] if r.get("f1") is not None else r["correct"]) for r in rows}


def translated_gap(receiver: dict, ceiling: dict, channel: dict) -> dict:
    """``core.stats.gap_closed`` under the names this study reports: receiver, with_context, translated."""
    gap = gap_closed(receiver, ceiling, channel)
    names = {"floor": "receiver", "ceiling": "with_context", "channel": "translated"}
    return {names.get(key, key): value for key, value in gap.items()}


def write_table(out: Path) -> None:
    """length.json (per study, per length: each translator's score and share of the gap), length.md, length.png."""
    runs = out / "runs"
    translators = sorted(p.name for p in runs.iterdir() if p.is_dir() and p.name != "baselines")
    data = json.loads((out / "data.json").read_text())
    studies = {  # study: per length (its name, its folder, the records' mean context tokens or None)
        "squad_f1": [(name, f"squad_{name}", data["lengths"][name]["mean_receiver_tokens"]) for name in LENGTHS],
        "needle_cloze": [(str(n), f"needle_{n}", data["needles"][str(n)]["mean_receiver_tokens"]) for n in NEEDLES],
        "synthetic_cloze": [(str(f), f"synthetic-{f}fact", None) for f in FACTS]}
    alone = {"squad_f1": "squad_paragraph", "needle_cloze": "needle_0"}  # no context: one run serves every length
    result = {"translators": translators}
    for study, lengths in studies.items():
        result[study] = {}
        for name, folder, tokens in lengths:
            receiver = records(runs / "baselines" / alone.get(study, folder), "receiver")
            ceiling = records(runs / "baselines" / folder, "receiver-with-context")
            result[study][name] = {"mean_receiver_tokens": tokens, **{
                t: translated_gap(receiver, ceiling, records(runs / t / folder, "c2c-translated")) for t in translators}}
    for study, short in (("squad_f1", "paragraph"), ("needle_cloze", "0")):  # target: >= 75% kept at 2,048 tokens
        result[f"{study}_kept_at_2048"] = {t: _ratio(result[study]["2048"][t].get("gap_closed"),
                                                      result[study][short][t].get("gap_closed")) for t in translators}
    (out / "length.json").write_text(json.dumps(result, indent=2) + "\n")
    titles = {"squad_f1": "SQuAD dev questions, their paragraph among its article's (F1)",
              "needle_cloze": "a synthetic fact hidden among dev paragraphs (cloze, % right of 3)",
              "synthetic_cloze": "synthetic contexts of N facts (cloze, % right of 3)"}
    lines = []
    for study, rows in ((s, result[s]) for s in studies):
        lines += [f"### {titles[study]}", "", "| context | receiver tokens | receiver | with text | " + " | ".join(
            f"{t}: score / gap closed [95% CI]" for t in translators) + " |", "|---" * (4 + len(translators)) + "|"]
        for name, row in rows.items():
            first = row[translators[0]]
            lines.append(f"| {name} | {row['mean_receiver_tokens'] or '-'} | {first.get('receiver')} | "
                         f"{first.get('with_context')} | " + " | ".join(_cell(row[t]) for t in translators) + " |")
        lines.append("")
    (out / "length.md").write_text("\n".join(lines))
    _plot(out / "length.png", result, studies, titles, translators)
    print("\n".join(lines))


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _cell(gap: dict) -> str:
    if not gap.get("n"):
        return "-"
    if gap["gap_closed"] is None:
        return f"{gap['translated']} / no gap"
    low, high = gap["ci95"]
    return f"{gap['translated']} / {100 * gap['gap_closed']:.0f}% [{100 * low:.0f}, {100 * high:.0f}]"


def _plot(path: Path, result: dict, studies: dict, titles: dict, translators: list[str]) -> None:
    """Each study's scores against the context's length: the receiver alone, reading the text, each translator."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(1, len(studies), figsize=(5 * len(studies), 4))
    for axis, (study, lengths) in zip(axes, studies.items()):
        xs = [tokens or name for name, _, tokens in lengths] if study != "synthetic_cloze" else list(FACTS)
        rows = [result[study][name] for name, _, _ in lengths]
        first = [row[translators[0]] for row in rows]
        axis.plot(xs, [r.get("with_context") for r in first], "k^-", label="receiver reading the text")
        axis.plot(xs, [r.get("receiver") for r in first], "k:", label="receiver alone")
        for t in translators:
            axis.plot(xs, [row[t].get("translated") for row in rows], "o-", label=f"translated ({t})")
        axis.set(xscale="log", title=titles[study].split(" (")[0], ylabel=titles[study].split(" (")[1].rstrip(")"),
                 xlabel="facts in the context" if study == "synthetic_cloze" else "context, receiver tokens")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["data", "train-data", "table"])
    parser.add_argument("--squad", type=Path, default=Path("../shared/data/squad/dev-v1.1.json"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--contexts", type=int, default=12)
    parser.add_argument("--questions", type=int, default=3, help="per context")
    parser.add_argument("--needles", type=int, default=40, help="hidden facts per length")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.step == "data":
        write_data(args.squad, args.out, args.contexts, args.questions, args.needles, args.seed)
    elif args.step == "train-data":
        write_train_data(args.squad, args.out, args.contexts, args.questions, args.needles, args.seed)
    else:
        write_table(args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
