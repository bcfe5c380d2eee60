"""benchmarks/context_length.py: the long contexts it builds and the share of the gap it reports (issue 32)."""

import importlib.util
import json
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("context_length", ROOT / "benchmarks" / "context_length.py")
length = importlib.util.module_from_spec(spec)
spec.loader.exec_module(length)

PARAGRAPHS = [f"p{i} " + "word " * (3 + i) for i in range(8)]  # paragraph i: 5 + i words
count = lambda text: len(text.split())  # noqa: E731


def test_a_paragraph_grows_among_its_neighbours_within_the_limit_and_longer_contexts_hold_shorter_ones():
    assert length.grown_context(PARAGRAPHS, 3, 0, count, random.Random(0)) == PARAGRAPHS[3]
    grown = [length.grown_context(PARAGRAPHS, 3, limit, count, random.Random("seed")) for limit in (10, 20, 40, 200)]
    assert [count(g) for g in grown] == sorted(count(g) for g in grown) and all(PARAGRAPHS[3] in g for g in grown)
    assert all(a in b for a, b in zip(grown, grown[1:]))  # nested: the same paragraphs, in order
    assert all(count(g) <= limit for g, limit in zip(grown, (10, 20, 40))) and grown[-1] == "\n\n".join(PARAGRAPHS)


def test_a_fact_hides_among_paragraphs_within_the_limit():
    fact = "Mira's pet is a dog."
    assert length.hidden_fact(fact, PARAGRAPHS, 0, count, random.Random(0)) == fact
    for limit in (10, 30, 60, 500):
        hidden = length.hidden_fact(fact, PARAGRAPHS, limit, count, random.Random(1))
        parts = hidden.split("\n\n")
        assert parts.count(fact) == 1 and count(hidden) <= limit and set(parts) - {fact} <= set(PARAGRAPHS)
    assert len(length.hidden_fact(fact, PARAGRAPHS, 500, count, random.Random(1)).split("\n\n")) == 9  # all 8 + fact


def test_the_share_of_the_gap_is_computed_on_the_items_all_methods_have():
    receiver = {"a": 0.0, "b": 0.0, "c": 0.5, "x": 1.0}
    ceiling = {"a": 1.0, "b": 1.0, "c": 1.0}
    channel = {"a": 1.0, "b": 0.0, "c": 0.5, "y": 0.0}
    result = length.translated_gap(receiver, ceiling, channel)
    assert result["n"] == 3 and result["gap_closed"] == pytest.approx(1 / 2.5)  # (1 + 0 + 0) / (1 + 1 + 0.5)
    assert (result["receiver"], result["with_context"], result["translated"]) == (16.7, 100.0, 50.0)
    assert result["ci95"][0] <= result["gap_closed"] <= result["ci95"][1]
    assert length.translated_gap(receiver, {}, channel) == {"n": 0}
    assert length.translated_gap({"a": 1.0}, {"a": 1.0}, {"a": 0.0})["gap_closed"] is None  # nothing to close


def test_the_table_reads_the_records_c2c_eval_wrote(tmp_path):
    runs = tmp_path / "runs"
    lengths = {name: {"mean_receiver_tokens": 100 * (k + 1)} for k, name in enumerate(length.LENGTHS)}
    needles = {str(n): {"mean_receiver_tokens": n + 10} for n in length.NEEDLES}
    (tmp_path / "data.json").write_text(json.dumps({"lengths": lengths, "needles": needles}))

    def write(folder, method, values, key="f1"):
        (runs / folder).mkdir(parents=True, exist_ok=True)
        (runs / folder / f"{method}.jsonl").write_text("".join(json.dumps({"id": i, key: v}) + "\n"
                                                               for i, v in enumerate(values)))

    write("baselines/squad_paragraph", "receiver", [0, 0, 0, 0])
    for k, name in enumerate(length.LENGTHS):
        write(f"baselines/squad_{name}", "receiver-with-context", [1, 1, 1, 1])
        write(f"mine/squad_{name}", "c2c-translated", [1, 1, 0, 0] if k < 3 else [1, 0, 0, 0])
    write("baselines/needle_0", "receiver", [False] * 4, key="correct")
    for n in length.NEEDLES:
        write(f"baselines/needle_{n}", "receiver-with-context", [True] * 4, key="correct")
        write(f"mine/needle_{n}", "c2c-translated", [True, True, n < 2048, False], key="correct")
    for facts in length.FACTS:
        write(f"baselines/synthetic-{facts}fact", "receiver", [False, True], key="correct")
        write(f"baselines/synthetic-{facts}fact", "receiver-with-context", [True, True], key="correct")
        write(f"mine/synthetic-{facts}fact", "c2c-translated", [True, True], key="correct")
    length.write_table(tmp_path)
    result = json.loads((tmp_path / "length.json").read_text())
    assert result["translators"] == ["mine"] and result["squad_f1"]["1024"]["mine"]["gap_closed"] == 0.5
    assert result["squad_f1"]["2048"]["mine"]["gap_closed"] == 0.25 and result["squad_f1_kept_at_2048"] == {"mine": 0.5}
    assert result["needle_cloze_kept_at_2048"] == {"mine": round(0.5 / 0.75, 3)}
    assert result["synthetic_cloze"]["64"]["mine"]["gap_closed"] == 1.0
    assert (tmp_path / "length.png").is_file() and "| 2048 | 400 | 0.0 | 100.0 | 25.0 / 25%" in \
        (tmp_path / "length.md").read_text()


def test_phase_two_long_items_come_from_train_articles_within_their_drawn_limits(tmp_path, monkeypatch):
    from c2c.data.squad import article_splits
    titles = [f"Article {k}" for k in range(12)]
    data = [{"title": t, "paragraphs": [{"context": f"{t} p{i} " + "word " * (60 + i),
                                         "qas": [{"id": f"{t}-{i}-{q}", "question": f"q{q}?",
                                                  "answers": [{"text": "word", "answer_start": 0}]} for q in range(3)]}
                                        for i in range(10)]} for t in titles]
    squad = tmp_path / "squad.json"
    squad.write_text(json.dumps({"data": data}))
    monkeypatch.setattr(length, "receiver_token_counter", lambda: count)
    length.write_train_data(squad, tmp_path / "out", contexts=6, questions=2, needles=5, seed=0, limits=(70, 150))  # articles of ~700 words: over 150 + 500
    train = {t for t, split in article_splits(titles).items() if split == "train"}
    written = json.loads((tmp_path / "out" / "squad_train.json").read_text())["data"]
    assert len(written) == 6 and {d["title"] for d in written} <= train
    assert all(count(d["paragraphs"][0]["context"]) <= 150 and len(d["paragraphs"][0]["qas"]) == 2 for d in written)
    needles = [json.loads(line) for line in (tmp_path / "out" / "needle_train.jsonl").read_text().splitlines()]
    from c2c.data.synthetic import synthetic_items
    facts = synthetic_items("train", 5, 1, 0)
    assert [n["question"] for n in needles] == [f["question"] for f in facts]
    assert all(f["context"] in n["context"] and count(n["context"]) <= 150 for n, f in zip(needles, facts))
    assert any(n["context"] != f["context"] for n, f in zip(needles, facts))  # hidden among paragraphs
    assert json.loads((tmp_path / "out" / "train_data.json").read_text())["squad"]["questions"] == 12
