"""Free-text answers: the SQuAD benchmark (official JSON, splits by article, the hub), SQuAD's normalisation,
exact match and F1, the synthetic generation score, answer extraction, and `c2c eval --scoring free` on tiny
models."""

import json
import sys
import types
from pathlib import Path

import pytest
from conftest import make_pair
from test_hub import FakeHub
from tiny import tiny

from c2c.evaluation import scorers
from c2c.evaluation.answers import extract_answer, f1, free_text_scores, normalize_answer, token_f1
from c2c.data import DataError, MCItem, article_splits, load_benchmark, question_type
from c2c.evaluation.evaluate import EvalConfig, EvalSetup, run_eval, shuffled_partners

# Eight articles, listed out of title order: sorted, they are A..H, so A, B, E, F are train, C, G dev, D, H test.
TITLES = ["H", "A", "G", "B", "F", "C", "E", "D"]


def squad_json(titles=TITLES) -> dict:
    """One paragraph per article with two questions (the second has a repeated reference)."""
    return {"version": "1.1", "data": [
        {"title": title, "paragraphs": [{"context": f"{title} city was founded in 1900 by Ada.", "qas": [
            {"id": f"{title}-0", "question": f"When was {title} city founded?",
             "answers": [{"text": "1900", "answer_start": 27}, {"text": "in 1900", "answer_start": 24}]},
            {"id": f"{title}-1", "question": f"Who founded {title} city?",
             "answers": [{"text": "Ada", "answer_start": 38}, {"text": "Ada", "answer_start": 38}]}]}]}
        for title in titles]}


@pytest.fixture
def squad_dir(tmp_path):
    (tmp_path / "squad").mkdir()
    (tmp_path / "squad" / "dev-v1.1.json").write_text(json.dumps(squad_json()))
    return tmp_path


# ------------------------------------------------------------------------------------------------ the benchmark
def test_squad_splits_by_article_and_carries_paragraph_references_title_and_question_type(squad_dir):
    titles = {split: sorted({item.title for item in load_benchmark("squad", split, squad_dir).items})
              for split in ("train", "dev", "test")}
    assert titles == {"train": ["A", "B", "E", "F"], "dev": ["C", "G"], "test": ["D", "H"]}
    test = load_benchmark("squad", "test", squad_dir)
    assert [item.id for item in test.items] == ["H-0", "H-1", "D-0", "D-1"]  # file order
    assert test.items[1] == MCItem("H-1", "Who founded H city?", [], -1, "who", "H city was founded in 1900 by Ada.",
                                   references=["Ada"], title="H")
    assert test.items[0].references == ["1900", "in 1900"] and test.items[0].subject == "when"
    assert test.report["kept"] == 4 and test.report["files"] == [str(squad_dir / "squad" / "dev-v1.1.json")]
    sample = load_benchmark("squad", "train", squad_dir, limit=3, seed=1)
    assert len(sample.items) == 3 and sample.items == load_benchmark("squad", "train", squad_dir, limit=3, seed=1).items
    assert article_splits(["b", "a", "d", "c", "a"]) == {"a": "train", "b": "train", "c": "dev", "d": "test"}
    whole = load_benchmark(str(squad_dir / "squad" / "dev-v1.1.json"))  # a file by its path: every question
    assert whole.name == "dev-v1.1" and len(whole.items) == 16 and whole.items[2].title == "A"


def test_question_types():
    assert [question_type(q) for q in ("In what year?", "Whose idea was it?", "How many?", "Name the river.",
                                       "Why not?", "Which one, and when?")] == \
        ["what", "who", "how", "other", "why", "which"]


def test_malformed_squad_files_say_what_is_wrong(squad_dir):
    path = squad_dir / "squad" / "dev-v1.1.json"
    path.write_text(json.dumps({"version": "1.1", "articles": []}))
    with pytest.raises(DataError, match=r"official SQuAD JSON.*no \"data\" list"):
        load_benchmark("squad", "dev", squad_dir)
    broken = squad_json(["A"])
    broken["data"][0]["paragraphs"][0]["qas"][0]["answers"] = []
    path.write_text(json.dumps(broken))
    with pytest.raises(DataError, match=r"article 0 paragraph 0 question 0: answers '\[\]'.*at least one text"):
        load_benchmark("squad", "train", squad_dir)
    assert [i.id for i in load_benchmark("squad", "train", squad_dir, skip_bad=True).items] == ["A-1"]


def test_squad_from_the_hub_gives_the_local_items(squad_dir, monkeypatch):
    hub = FakeHub()
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=hub.load_dataset))
    rows = [{"id": qa["id"], "title": article["title"], "context": paragraph["context"], "question": qa["question"],
             "answers": {"text": [a["text"] for a in qa["answers"]],
                         "answer_start": [a["answer_start"] for a in qa["answers"]]}}
            for article in squad_json()["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    hub.add("rajpurkar/squad", None, "validation", rows[::-1])  # another order: the split is by sorted title
    for split in ("train", "dev", "test"):
        local = load_benchmark("squad", split, squad_dir).items
        assert sorted(load_benchmark("squad", split, "hf").items, key=lambda i: i.id) == sorted(local, key=lambda i: i.id)
    assert hub.calls == [("rajpurkar/squad", None, "validation")] * 3


# ------------------------------------------------------------------------------------------------ the scores
def test_squad_normalisation_exact_match_and_f1():
    assert normalize_answer("  The Cat, sat!  on a   mat. ") == "cat sat on mat"
    assert normalize_answer("An apple's core") == "apples core"
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(0.8)  # P 2/2, R 2/3: 2PR/(P+R) = 0.8
    assert token_f1("cat cat", "cat") == pytest.approx(2 / 3)  # P 1/2, R 1/1
    assert token_f1("dog", "cat") == 0.0 and token_f1("the", "a") == 0.0
    assert f1("Soviet Union army", ["the Soviet Union", "USSR"]) == pytest.approx(0.8)
    assert free_text_scores("The Soviet Union.", ["Soviet Union", "USSR"]) == \
        {"exact_match": True, "f1": 1.0, "recall": True}
    assert free_text_scores("It was the Soviet Union's army", ["Soviet Union"]) == \
        {"exact_match": False, "f1": 0.2857, "recall": False}  # "unions" is another word: P 1/5, R 1/2
    assert free_text_scores("in 1900 by Ada", ["1900", "in 1900"]) == \
        {"exact_match": False, "f1": 0.6667, "recall": True}  # vs "in 1900": P 2/4, R 2/2
    assert free_text_scores("in 19000", ["1900"])["recall"] is False  # on word boundaries


def test_synthetic_generation_score_names_the_right_value_and_no_other():
    rivals = ["cat", "pony", "dog"]
    assert free_text_scores("a turtle", ["turtle"], rivals)["generation"] is True
    assert free_text_scores("a turtle or a cat", ["turtle"], rivals)["generation"] is False
    assert free_text_scores("a cat", ["turtle"], rivals)["generation"] is False
    assert free_text_scores("a hotdog and a turtle", ["turtle"], rivals)["generation"] is True  # "hotdog" is no dog
    item = load_benchmark("synthetic-1fact", "test", limit=1).items[0]
    assert item.gold_answers == [item.choices[item.answer]] and item.choices[item.answer] not in item.rivals
    assert set(item.choices) - {item.choices[item.answer]} <= set(item.rivals) and len(item.rivals) >= 14


def test_answer_extraction():
    assert extract_answer(" Zelda's pet is a turtle.\n\nMore text.", "What is Zelda's pet?") == "a turtle"
    assert extract_answer("\n The answer is: The answer is: 1900\nThe answer is: 1900", "When?") == "1900"
    assert extract_answer("Paris. It is the capital of France.", "What is the capital of France?") == "Paris"
    assert extract_answer("Dr. E. W. Scripps founded it in the U.S. in 1.5 years. Then", "Who founded it?") == \
        "Dr. E. W. Scripps founded it in the U.S. in 1.5 years"
    assert extract_answer("The answer to this question is:", "Who?") == extract_answer("", "Who?") == ""
    assert extract_answer("A: The answer is: Ada\n", "Who?") == "Ada"


# ------------------------------------------------------------------------------------------------ c2c eval
def _fake_answers(monkeypatch, text: str):
    """Every method's greedy generation returns ``text`` (the protocols run as usual around it)."""
    monkeypatch.setattr(scorers, "greedy_texts", lambda model, tokenizer, ids, *rest: [(text, 3)] * len(ids))


def test_free_scoring_on_squad_gives_the_scores_the_table_and_the_records(squad_dir, tmp_path, monkeypatch):
    setup = EvalSetup(make_pair(chat_template=False), max_new_tokens=5)
    _fake_answers(monkeypatch, " 1900.\nAnd more.")
    out = tmp_path / "out"
    summary = run_eval(EvalConfig(["squad"], ["receiver", "receiver-with-context"], scoring="free",
                                  data_dir=str(squad_dir), out=str(out)), setup)
    result = summary["benchmarks"]["squad"]
    receiver = result["methods"]["receiver"]
    # "1900" on the two when-questions (exact match), F1 0 on the two who-questions
    assert (receiver["exact_match"], receiver["f1"], receiver["recall"]) == (0.5, 0.5, 0.5)
    assert receiver["per_subject_f1"] == {"when": 1.0, "who": 0.0}
    assert receiver["f1_ci95"] == [0.0, 1.0]  # 0.5 -+ 1.96 * sd 0.577 / sqrt(4), within [0, 1]
    assert receiver["exact_match_ci95"] == [0.15, 0.85] and "generation" not in receiver
    assert result["paired"]["receiver-with-context - receiver"] == {"n": 4, "difference": 0.0, "ci95": [0.0, 0.0]}
    records = [json.loads(line) for line in (out / "squad" / "receiver-with-context.jsonl").open()]
    assert records[0]["text"] == " 1900.\nAnd more." and records[0]["prediction"] == "1900"
    assert records[0]["gold"] == ["1900", "in 1900"] and records[0]["correct"] is True
    table = (out / "table.md").read_text()
    assert "| receiver | 50.0 [15.0, 85.0] | 50.0 [0.0, 100.0] | 50.0 [15.0, 85.0] |" in table
    with pytest.raises(ValueError, match="free-text questions without answer choices.*--scoring free"):
        run_eval(EvalConfig(["squad"], ["receiver"], scoring="cloze", data_dir=str(squad_dir), out=str(out)), setup)


def test_every_context_method_runs_under_free_scoring(tmp_path):
    from test_context import fitted
    setup = EvalSetup(fitted(), lora_receiver=tiny("llama"), t2t_tokens=3, max_new_tokens=4)
    methods = ["receiver", "receiver-with-context", "sharer-with-context", "t2t", "c2c-translated",
               "c2c-translated-shuffled", "lora-receiver"]
    summary = run_eval(EvalConfig(["synthetic-1fact"], methods, scoring="free", limit=4, out=str(tmp_path)), setup)
    result = summary["benchmarks"]["synthetic-1fact"]
    for method in methods:
        records = [json.loads(line) for line in (tmp_path / "synthetic-1fact" / f"{method}.jsonl").open()]
        assert all(0 < r["generated_tokens"] <= 4 and isinstance(r["text"], str) for r in records)
        assert all(free_text_scores(r["prediction"], r["gold"], ["x"])["f1"] == r["f1"] for r in records)
        assert result["methods"][method]["generation"] == sum(r["generation"] for r in records) / 4
    assert result["paired"]["c2c-translated - c2c-translated-shuffled"]["n"] == 4
    assert result["paired_generation"]["c2c-translated - receiver"]["n"] == 4


def test_the_shuffled_control_never_reads_the_same_paragraph():
    items = [MCItem(f"q{i}", "Q?", [], -1, context=f"paragraph {i // 3}", references=["x"]) for i in range(9)]
    for seed in range(20):
        partners = shuffled_partners(items, seed)
        assert all(partners[item.id].context != item.context for item in items)


def test_the_demo_paragraphs_are_few_and_from_test_articles():
    from conftest import real_data
    examples = Path(__file__).resolve().parents[1] / "examples"
    demo = load_benchmark(str(examples / "data" / "squad_demo.json"))
    sys.path.insert(0, str(examples))
    from side_by_side import HANDOFF_QUESTIONS
    assert len(demo.items) <= 50 and set(HANDOFF_QUESTIONS) <= {item.id for item in demo.items}
    test_titles = {item.title for item in load_benchmark("squad", "test", real_data()).items}
    assert {item.title for item in demo.items} <= test_titles
