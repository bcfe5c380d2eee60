"""Batched evaluation (``c2c eval --batch-size``): every method that runs a model scores each item as it does one
at a time, within 1e-4 nats, with prompts and contexts of different lengths in one batch."""

import json

import pytest
import torch
from conftest import make_pair
from test_context import fitted
from tiny import tiny

from c2c.evaluation.evaluate import EvalConfig, EvalSetup, run_eval

QUESTIONS = [
    ("Which pet does Mira have?", ["dog", "cat", "pony"], 0, "Mira's pet is a dog."),
    ("Water boils at what temperature in the kitchen of the old house by the river?",
     ["0 degrees", "100 degrees Celsius", "50 degrees"], 1,
     "At sea level, water boils at 100 degrees Celsius, which is the temperature the kettle reaches."),
    ("Closest planet?", ["Venus", "Earth", "Mercury", "Mars"], 2, "Mercury orbits nearest."),
    ("Which of these is an animal that lives on a farm and says moo?", ["rock", "cow"], 1,
     "Cows live on farms; they say moo and give milk, and farmers keep them in barns over the winter months."),
    ("Fox jumps over the lazy what?", ["dog", "cat", "bird"], 0, "The fox jumps over the lazy dog."),
]


@pytest.fixture
def bench(tmp_path):
    path = tmp_path / "ctx_mc.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "choices": c, "answer": a, "context": ctx,
                                        "subject": "general"}) + "\n"
                            for i, (q, c, a, ctx) in enumerate(QUESTIONS)))
    return str(path)


def records(folder, method):
    return {r["id"]: r for r in map(json.loads, (folder / f"ctx_mc/{method}.jsonl").open())}


def compare(tmp_path, bench, setup, methods, scoring="cloze"):
    for batch_size in (1, 3):
        run_eval(EvalConfig([bench], methods, scoring=scoring, out=str(tmp_path / f"b{batch_size}"),
                            batch_size=batch_size), setup)
    for method in methods:
        one, three = records(tmp_path / "b1", method), records(tmp_path / "b3", method)
        assert set(one) == set(three) == {f"q{i}" for i in range(len(QUESTIONS))}, method
        assert [three[f"q{i}"]["batch"] for i in range(5)] == [3, 3, 3, 2, 2], method
        assert all("batch" not in r for r in one.values()), method
        for item_id, record in one.items():
            assert three[item_id]["scores"] == pytest.approx(record["scores"], abs=1e-4), (method, item_id)
            assert three[item_id]["prediction"] == record["prediction"], (method, item_id)
            assert three[item_id].get("partner") == record.get("partner"), (method, item_id)
            assert three[item_id]["latency_ms"] > 0


@pytest.mark.parametrize("scoring", ["cloze", "cloze-options"])
def test_batched_equals_one_at_a_time_fused_pair(tmp_path, bench, scoring):
    setup = EvalSetup(make_pair(chat_template=False), lora_receiver=tiny("llama"))
    compare(tmp_path, bench, setup, ["receiver", "sharer", "receiver-with-context", "sharer-with-context", "c2c",
                                     "c2c-shuffled", "lora-receiver"], scoring)


def test_batched_equals_one_at_a_time_chat_template(tmp_path, bench):
    compare(tmp_path, bench, EvalSetup(make_pair(chat_template=True)), ["receiver", "sharer-with-context", "c2c"])


def test_batched_equals_one_at_a_time_translated(tmp_path, bench):
    compare(tmp_path, bench, EvalSetup(fitted()), ["receiver", "c2c-translated", "c2c-translated-shuffled"])


def test_batched_records_are_resumed_per_item(tmp_path, bench):
    setup = EvalSetup(make_pair(chat_template=False))
    out = tmp_path / "b3"
    run_eval(EvalConfig([bench], ["c2c"], scoring="cloze", out=str(out), batch_size=3, limit=None,
                        method_limits={"c2c": 2}), setup)
    first = records(out, "c2c")
    assert set(first) == {"q0", "q1"} and all(r["batch"] == 2 for r in first.values())
    run_eval(EvalConfig([bench], ["c2c"], scoring="cloze", out=str(out), batch_size=3), setup)
    second = records(out, "c2c")
    assert len(second) == 5 and all(second[i] == first[i] for i in first)  # reused, not rescored
    assert [second[f"q{i}"]["batch"] for i in range(2, 5)] == [3, 3, 3]


def test_other_protocols_and_t2t_stay_one_at_a_time(tmp_path, bench):
    setup = EvalSetup(make_pair(chat_template=False), t2t_tokens=3)
    run_eval(EvalConfig([bench], ["receiver", "t2t"], scoring="letter", out=str(tmp_path / "l"), batch_size=3),
             setup)
    assert all("batch" not in r for r in records(tmp_path / "l", "receiver").values())
    run_eval(EvalConfig([bench], ["t2t"], scoring="cloze", out=str(tmp_path / "c"), batch_size=3), setup)
    assert all("batch" not in r for r in records(tmp_path / "c", "t2t").values())
    with pytest.raises(ValueError, match="batch_size"):
        EvalConfig([bench], ["receiver"], batch_size=0)


def test_default_batch_size_by_device():
    from c2c.evaluation.evaluate import default_batch_size
    assert default_batch_size("cpu") == 1 and default_batch_size(torch.device("cuda", 0)) == 8
