"""Batched evaluation (``c2c eval --batch-size``): every method that runs a model, under every scoring, scores each
item as it does one at a time (within 1e-4 nats; the same generated text), with prompts and contexts of different
lengths in one batch."""

import json

import pytest
import torch
from conftest import make_pair
from test_context import fitted
from tiny import tiny

from c2c.core import cache as kvcache
from c2c.core.tensors import pad_rows
from c2c.evaluation.evaluate import EvalConfig, EvalSetup, run_eval
from c2c.runtime import passes
from c2c.runtime.passes import decode, greedy_texts, prompt_cache

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


METHODS = ["receiver", "sharer", "receiver-with-context", "sharer-with-context", "receiver-enriched", "c2c",
           "c2c-shuffled", "lora-receiver", "t2t"]


def compare(tmp_path, bench, setup, methods, scoring="cloze"):
    for batch_size in (1, 3):
        run_eval(EvalConfig([bench], methods, scoring=scoring, out=str(tmp_path / f"b{batch_size}"),
                            batch_size=batch_size), setup)
    for method in methods:
        one, three = records(tmp_path / "b1", method), records(tmp_path / "b3", method)
        assert set(one) == set(three) == {f"q{i}" for i in range(len(QUESTIONS))}, method
        assert sorted(r["batch"] for r in three.values()) == [2, 2, 3, 3, 3], method
        assert all("batch" not in r for r in one.values()), method
        for item_id, record in one.items():
            batched = three[item_id]
            if record["scores"] is not None:
                assert batched["scores"] == pytest.approx(record["scores"], abs=1e-4), (method, item_id)
            for key in ("prediction", "text", "generated_tokens", "partner", "background", "sharer_tokens"):
                assert batched.get(key) == record.get(key), (method, item_id, key)
            assert batched["latency_ms"] > 0


@pytest.mark.parametrize("scoring", ["cloze", "cloze-options", "letter", "generate", "free"])
def test_batched_equals_one_at_a_time_every_method_and_scoring(tmp_path, bench, scoring):
    setup = EvalSetup(make_pair(chat_template=False), lora_receiver=tiny("llama"), t2t_tokens=4, max_new_tokens=5)
    compare(tmp_path, bench, setup, METHODS, scoring)


def test_batched_equals_one_at_a_time_chat_template(tmp_path, bench):
    compare(tmp_path, bench, EvalSetup(make_pair(chat_template=True), t2t_tokens=4),
            ["receiver", "sharer-with-context", "receiver-enriched", "c2c", "t2t"])


def test_batched_equals_one_at_a_time_translated(tmp_path, bench):
    compare(tmp_path, bench, EvalSetup(fitted()), ["receiver", "c2c-translated", "c2c-translated-shuffled"])


def test_batches_group_prompts_of_similar_length(tmp_path, bench):
    """The records file lists items in the order they were scored: the three shortest prompts (with their
    contexts) first, together."""
    setup = EvalSetup(make_pair(chat_template=False))
    run_eval(EvalConfig([bench], ["receiver"], scoring="cloze", out=str(tmp_path), batch_size=3), setup)
    order = [json.loads(line)["id"] for line in (tmp_path / "ctx_mc/receiver.jsonl").open()]
    size = {f"q{i}": len(q) + len(" ".join(c)) + len(ctx) for i, (q, c, _, ctx) in enumerate(QUESTIONS)}
    assert max(size[i] for i in order[:3]) < min(size[i] for i in order[3:])
    assert sorted(order) == sorted(size)


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


def test_batched_items_count_as_throughput_not_latency(tmp_path, bench):
    setup = EvalSetup(make_pair(chat_template=False))
    summary = run_eval(EvalConfig([bench], ["receiver"], scoring="cloze", out=str(tmp_path), batch_size=3), setup)
    result = summary["benchmarks"]["ctx_mc"]["methods"]["receiver"]
    assert result["n"] == 5 and result["latency_n"] == 0 and result["latency_ms_mean"] is None
    assert "96.4], batched |" in (tmp_path / "table.md").read_text()
    with pytest.raises(ValueError, match="batch_size"):
        EvalConfig([bench], ["receiver"], batch_size=0)


def test_default_batch_size_by_device():
    from c2c.evaluation.evaluate import default_batch_size
    assert default_batch_size("cpu") == 1 and default_batch_size(torch.device("cuda", 0)) == 8


def test_greedy_texts_cut_each_row_at_its_own_end_of_sequence(monkeypatch):
    """Decoded together, a row that ends early reads as it does decoded alone (its end-of-sequence token counted,
    the padding ``generate`` adds after it dropped) while the other rows go on."""
    loaded = tiny("llama")
    model, tokenizer = loaded.model, loaded.tokenizer
    prompts = [[5, 9, 13, 2], [7, 3], [11, 4, 6, 8, 10]]

    def decoded(rows):
        ids = pad_rows(rows, tokenizer.pad_token_id or 0, left=True)
        mask = pad_rows([[1] * len(row) for row in rows], 0, left=True)
        return greedy_texts(model, tokenizer, ids, mask, kvcache.full_length_cache(), 6)
    monkeypatch.setattr(model.generation_config, "eos_token_id", None)
    free_run = [decode(model, tokenizer, torch.tensor([row]), torch.ones(1, len(row), dtype=torch.long),
                       kvcache.full_length_cache(), 6, do_sample=False)[0].tolist() for row in prompts]
    monkeypatch.setattr(model.generation_config, "eos_token_id", free_run[0][1])  # the first row ends early
    alone = [decoded([row])[0] for row in prompts]
    assert decoded(prompts) == alone
    assert alone[0][1] <= 2 and max(count for _, count in alone) == 6


@pytest.mark.parametrize("kind", ["llama", "gemma", "qwen"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("rows_of", ["every prompt", "each prompt"])
def test_packed_continuations_equal_one_row_per_continuation(monkeypatch, kind, attention, rows_of):
    """Continuations packed (in one row for every prompt, or a row for each) score as one row each: left-padded
    prompts of different lengths, continuations of 1 to 5 tokens, and (tiny Gemma: a window of 8) prompts longer
    than the sliding window; both attention implementations that take a built mask."""
    loaded = tiny(kind)
    model, tokenizer = loaded.model, loaded.tokenizer
    monkeypatch.setattr(model.config.get_text_config(decoder=True), "_attn_implementation", attention)
    monkeypatch.setattr(passes, "_prompts_per_row",
                        lambda model, lengths, cached: len(lengths) if rows_of == "every prompt" else 1)
    prompts = [[5, 9, 13, 2, 7, 7, 3, 11, 12, 4, 9, 8], [7, 3], [11, 4, 6, 8, 10]]
    rows, per_prompt = [[4], [8, 9, 10], [3, 3, 5, 6, 2], [12, 13], [6], [9, 9, 9], [10, 2, 5, 7]], [3, 1, 3]
    ids = pad_rows(prompts, 0, left=True)
    mask = pad_rows([[1] * len(row) for row in prompts], 0, left=True)
    with torch.no_grad():
        cache = prompt_cache(model, ids, mask)
        assert passes.packed_masks(model) is not None
        packed = passes.token_continuations(model, tokenizer, ids, mask, cache, rows, per_prompt)
        monkeypatch.setattr(passes, "packed_masks", lambda model: None)
        one_each = passes.token_continuations(model, tokenizer, ids, mask, cache, rows, per_prompt)
    assert kvcache.seq_length(cache) == ids.shape[1] - 1  # neither pass extended the prompts' cache
    assert torch.allclose(packed[0], one_each[0], atol=1e-5) and packed[0].abs().min() > 0.1
    assert packed[1].tolist() == one_each[1].tolist() == [len(row) for row in rows]
    assert packed[2].tolist() == one_each[2].tolist()


def test_packing_is_left_to_attention_it_can_mask(monkeypatch):
    model = tiny("llama").model
    monkeypatch.setattr(model.config, "_attn_implementation", "flash_attention_2")
    assert passes.packed_masks(model) is None
    monkeypatch.setattr(model.config, "_attn_implementation", "sdpa")
    monkeypatch.setattr(model.config, "layer_types", ["full_attention", "linear_attention"], raising=False)
    assert passes.packed_masks(model) is None


def test_continuations_share_a_row_when_that_costs_less():
    """Short prompts with continuations of very different lengths: one row (no padding); long prompts: a row each
    (no attention across the other prompts' caches)."""
    model = tiny("llama").model  # hidden 32, intermediate 64: a (query, key) pair costs 1/160 of a token
    assert passes._prompts_per_row(model, [2, 40, 3, 3], cached=10) == 4
    assert passes._prompts_per_row(model, [2, 40, 3, 3], cached=4000) == 1
    assert passes._prompts_per_row(model, [5], cached=10) == 1
