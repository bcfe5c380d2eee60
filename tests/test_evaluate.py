"""Evaluation methods and protocols end to end on tiny models, with benchmark fixture files."""

import json
import math
import statistics

import pytest
import torch
from conftest import make_pair
from tiny import tiny

from c2c.data import cloze_continuations, load_benchmark
from c2c.evaluation.evaluate import EvalConfig, EvalSetup, derived_records, run_eval, shuffled_partners
from c2c.core.stats import gap_closed, paired_difference, wilson
from c2c.evaluation.scorers import ModelScorer, PairScorer, item_prompt, score_items, state_continuations

QUESTIONS = [
    ("What is the capital of France?", ["Paris", "London", "Berlin", "Rome"], 0),
    ("Water boils at what temperature?", ["0 degrees", "100 degrees Celsius", "50 degrees", "20 degrees"], 1),
    ("Which planet is closest to the sun?", ["Venus", "Earth", "Mercury", "Mars"], 2),
    ("Which of these is an animal?", ["rock", "chair", "cloud", "dog"], 3),
    ("The quick brown fox jumps over the lazy what?", ["dog", "cat", "bird", "fish"], 0),
]


@pytest.fixture
def bench(tmp_path):
    path = tmp_path / "tiny_mc.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "choices": c, "answer": a,
                                        "subject": "science" if i % 2 else "general"}) + "\n"
                            for i, (q, c, a) in enumerate(QUESTIONS)))
    return str(path)


def _setup(pair=None):
    return EvalSetup(pair or make_pair(chat_template=False), lora_receiver=tiny("llama"), t2t_tokens=4,
                     max_new_tokens=6)


@pytest.mark.parametrize("scoring", ["cloze", "cloze-options", "letter"])
def test_every_method_end_to_end(tmp_path, bench, scoring):
    methods = ["receiver", "sharer", "t2t", "c2c", "c2c-shuffled", "lora-receiver", "ensemble", "routing",
               "routing-oracle"]
    summary = run_eval(EvalConfig([bench], methods, scoring=scoring, out=str(tmp_path / "out")), _setup())
    result = summary["benchmarks"]["tiny_mc"]
    assert result["n"] == 5 and set(result["methods"]) == set(methods)
    for method, values in result["methods"].items():  # the summary is its per-item records, counted here
        written = [json.loads(line) for line in (tmp_path / f"out/tiny_mc/{method}.jsonl").read_text().splitlines()]
        assert all(r["correct"] == (r["prediction"] == r["gold"]) for r in written), method
        correct = sum(r["correct"] for r in written)
        assert values["n"] == len(written) == 5 and values["accuracy"] == round(correct / 5, 4), method
        assert values["ci95"] == pytest.approx(closed_form_wilson(correct, 5), abs=1e-4), method
        latency = statistics.fmean(r["latency_ms"] for r in written)
        assert latency > 0 and values["latency_ms_mean"] == pytest.approx(latency, abs=0.01), method
    oracle, r, s = (result["methods"][m]["accuracy"] for m in ("routing-oracle", "receiver", "sharer"))
    assert oracle >= max(r, s)
    records = [json.loads(line) for line in (tmp_path / "out/tiny_mc/c2c.jsonl").read_text().splitlines()]
    assert {"id", "prediction", "gold", "correct", "scores", "latency_ms", "generated_tokens"} <= set(records[0])
    t2t = [json.loads(line) for line in (tmp_path / "out/tiny_mc/t2t.jsonl").read_text().splitlines()]
    assert all(0 < r["sharer_tokens"] <= 4 for r in t2t)
    gain = result["paired"]["c2c - c2c-shuffled"]
    c2c_accuracy, shuffled_accuracy = (result["methods"][m]["accuracy"] for m in ("c2c", "c2c-shuffled"))
    assert gain["n"] == 5 and gain["difference"] == pytest.approx(c2c_accuracy - shuffled_accuracy, abs=1e-4)
    assert set(result["paired"]) == {"c2c - c2c-shuffled", "c2c - receiver", "c2c - sharer", "c2c - lora-receiver",
                                     "c2c - t2t"}
    sharer_picks = {r["id"]: r["prediction"] for r in map(json.loads, (tmp_path / "out/tiny_mc/sharer.jsonl").open())}
    for method in ("receiver", "c2c", "c2c-shuffled", "t2t", "lora-receiver"):
        expected = statistics.fmean(r["prediction"] == sharer_picks[r["id"]]
                                    for r in map(json.loads, (tmp_path / f"out/tiny_mc/{method}.jsonl").open()))
        assert result["agreement_with_sharer"][method]["agreement"] == pytest.approx(expected, abs=1e-4), method
    assert set(result["agreement_with_sharer"]) == {"receiver", "c2c", "c2c-shuffled", "t2t", "lora-receiver"}
    table = (tmp_path / "out/table.md").read_text()
    assert table.count("|") > 20 and "| c2c - c2c-shuffled |" in table and "Agreement with the sharer" in table
    assert (tmp_path / "out/accuracy_vs_latency.png").stat().st_size > 1000


def test_generate_scoring_extracts_letters(tmp_path, bench):
    summary = run_eval(EvalConfig([bench], ["receiver", "c2c"], scoring="generate", out=str(tmp_path)), _setup())
    records = [json.loads(line) for line in (tmp_path / "tiny_mc/c2c.jsonl").read_text().splitlines()]
    assert all(0 < r["generated_tokens"] <= 6 and "text" in r for r in records)
    assert summary["benchmarks"]["tiny_mc"]["methods"]["c2c"]["n"] == 5
    with pytest.raises(ValueError, match="per-choice scores"):
        EvalConfig([bench], ["routing"], scoring="generate")


def test_interrupted_run_resumes_and_finished_run_is_not_recomputed(tmp_path, bench):
    config = EvalConfig([bench], ["receiver"], scoring="cloze", out=str(tmp_path))
    run_eval(config, _setup())
    path = tmp_path / "tiny_mc/receiver.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # killed mid-write of the third record
    run_eval(config, _setup())
    resumed = path.read_text().splitlines()
    assert resumed[:2] == lines[:2] and len([line for line in resumed if line.startswith("{\"id\"")]) == 5
    before = path.read_text()
    run_eval(config, _setup())
    assert path.read_text() == before  # finished: nothing recomputed
    run_eval(EvalConfig([bench], ["receiver"], scoring="cloze", out=str(tmp_path), recompute=True), _setup())
    assert len(path.read_text().splitlines()) == 5


def test_a_grown_item_set_redoes_only_the_shuffled_records_whose_partner_changed(tmp_path, bench):
    methods = ["c2c", "c2c-shuffled"]
    run_eval(EvalConfig([bench], methods, scoring="cloze", limit=3, out=str(tmp_path / "grown")), _setup())
    small = {r["id"]: r for r in map(json.loads, (tmp_path / "grown/tiny_mc/c2c-shuffled.jsonl").open())}
    grown = run_eval(EvalConfig([bench], methods, scoring="cloze", out=str(tmp_path / "grown")), _setup())
    fresh = run_eval(EvalConfig([bench], methods, scoring="cloze", out=str(tmp_path / "fresh")), _setup())
    read = lambda run, method: [json.loads(line) for line in (tmp_path / run / "tiny_mc" / f"{method}.jsonl").open()]  # noqa: E731
    partners = {item_id: p.id for item_id, p in shuffled_partners(load_benchmark(bench).items, seed=0).items()}
    for run in ("grown", "fresh"):
        records = read(run, "c2c-shuffled")
        assert sorted(r["id"] for r in records) == sorted(partners)  # one current record per item, stale ones gone
        assert all(r["partner"] == partners[r["id"]] for r in records)
    same = lambda r: (r["id"], r["partner"], r["scores"])  # noqa: E731
    assert sorted(map(same, read("grown", "c2c-shuffled"))) == sorted(map(same, read("fresh", "c2c-shuffled")))
    kept = [i for i, r in small.items() if r["partner"] == partners[i]]
    assert all(r["latency_ms"] == small[r["id"]]["latency_ms"] for r in read("grown", "c2c-shuffled") if r["id"] in kept)
    assert len(kept) < len(small)  # the partners changed for some of the first items: those were redone
    assert grown["benchmarks"]["tiny_mc"]["methods"]["c2c-shuffled"]["accuracy"] == \
        fresh["benchmarks"]["tiny_mc"]["methods"]["c2c-shuffled"]["accuracy"]


def test_shuffled_control_really_reads_another_question(bench):
    items = load_benchmark(bench).items
    partners = shuffled_partners(items, seed=0)
    assert all(partners[item.id].id != item.id for item in items)
    assert sorted(p.id for p in partners.values()) == sorted(i.id for i in items)  # a permutation
    pair = make_pair()
    scorer = PairScorer("c2c", pair)
    prompt, other = "Question: What is the capital of France?\nAnswer:", "Question: Which planet is closest?\nAnswer:"
    own = state_continuations(scorer.prefill(prompt), [" Paris"])[0][0]
    shuffled = state_continuations(scorer.prefill(prompt, other), [" Paris"])[0][0]
    again = state_continuations(scorer.prefill(prompt, other), [" Paris"])[0][0]
    assert own != shuffled and shuffled == again
    receiver = PairScorer("receiver", pair, fuse=False)
    alone = state_continuations(receiver.prefill(prompt), [" Paris"])[0][0]
    assert alone == state_continuations(receiver.prefill(prompt, other), [" Paris"])[0][0] != own


def test_continuation_logprobs_equal_the_stock_model():
    model = tiny("gemma")
    scorer = ModelScorer("sharer", model, chat=False)
    prompt, continuations = "Question: capital of France?\nAnswer:", [" Paris", " the capital city"]
    scored = state_continuations(scorer.prefill(prompt), continuations)
    for (total, count), continuation in zip(scored, continuations):
        ids = model.tokenizer(prompt)["input_ids"]
        cont = model.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        logprobs = torch.log_softmax(model.model(input_ids=torch.tensor([ids + cont])).logits[0, :-1], -1)
        expected = sum(logprobs[len(ids) - 1 + i, t].item() for i, t in enumerate(cont))
        assert count == len(cont) and total == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("receiver,sharer", [("llama", "gemma"), ("qwen", "llama")])
def test_batched_choice_scores_equal_the_evaluators_and_train_the_fuser(bench, receiver, sharer):
    """Training's choice objective ranks choices exactly as `c2c eval` does (cloze), for a left-padded batch of
    items with different prompt lengths and choice counts; gradients reach the fuser."""
    items = load_benchmark(bench).items[:3]
    items[1].choices = items[1].choices[:2] + ["a much longer choice than the others"]  # 3 choices, long one
    pair = make_pair(receiver, (sharer,))
    prompts = [item_prompt(item, "cloze") for item in items]
    batched = pair.choice_scores(pair.prepare(prompts), [cloze_continuations(item) for item in items])
    for item, prompt, scores in zip(items, prompts, batched):
        single = score_items(PairScorer("c2c", pair).prefill(prompt), [item], "cloze")[0]["scores"]
        torch.testing.assert_close(scores.detach(), torch.tensor(single), rtol=1e-4, atol=1e-5)
    pair.train()  # inference runs stacked copies of the fuser weights; training runs the parameters
    choices = [cloze_continuations(item) for item in items]
    sum(s.sum() for s in pair.choice_scores(pair.prepare(prompts), choices)).backward()
    grads = [p.grad for p in pair.fusers.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("receiver,sharer", [("llama", "gemma"), ("qwen", "llama")])
def test_sharer_choice_scores_equal_the_evaluators_sharer_method(bench, receiver, sharer):
    """The distillation target ranks choices as `c2c eval`'s `sharer` method does, from a left-padded batch."""
    items = load_benchmark(bench).items[:3]
    items[1].choices = items[1].choices[:2] + ["a much longer choice than the others"]
    pair = make_pair(receiver, (sharer,))
    prompts = [item_prompt(item, "cloze") for item in items]
    batched = pair.sharer_choice_scores(pair.prepare(prompts), [cloze_continuations(item) for item in items])
    alone = ModelScorer("sharer", pair.sharers[0], chat=pair.config.chat_template)
    for item, prompt, scores in zip(items, prompts, batched):
        single = score_items(alone.prefill(prompt), [item], "cloze")[0]["scores"]
        torch.testing.assert_close(scores, torch.tensor(single), rtol=1e-4, atol=1e-5)


def test_derived_methods():
    receiver = {"a": {"scores": [0.0, -5.0], "prediction": 0, "correct": True, "gold": 0, "subject": None,
                      "latency_ms": 1.0},
                "b": {"scores": [-0.7, -0.69], "prediction": 1, "correct": False, "gold": 0, "subject": None,
                      "latency_ms": 1.0}}
    sharer = {"a": {"scores": [-3.0, -0.1], "prediction": 1, "correct": False, "gold": 0, "subject": None,
                    "latency_ms": 2.0},
              "b": {"scores": [0.0, -9.0], "prediction": 0, "correct": True, "gold": 0, "subject": None,
                    "latency_ms": 2.0}}
    routing = {r["id"]: r for r in derived_records("routing", receiver, sharer)}
    assert routing["a"]["route"] == "receiver" and routing["b"]["route"] == "sharer"
    assert all(r["correct"] for r in derived_records("routing-oracle", receiver, sharer))
    ensemble = {r["id"]: r for r in derived_records("ensemble", receiver, sharer)}
    assert ensemble["b"]["prediction"] == 0 and ensemble["a"]["latency_ms"] == 3.0


def test_paired_difference_matches_items_by_id():
    c2c = [{"id": str(i), "correct": i < 6} for i in range(10)]  # 6 right
    shuffled = [{"id": str(i), "correct": i % 2 == 0} for i in reversed(range(10))]  # 5 right, other order
    result = paired_difference(c2c, shuffled)
    differences = [int(i < 6) - int(i % 2 == 0) for i in range(10)]  # +1 three times, -1 twice
    assert result["n"] == 10 and result["difference"] == 0.1
    half = 1.96 * statistics.stdev(differences) / math.sqrt(10)
    assert result["ci95"] == [round(0.1 - half, 4), round(0.1 + half, 4)]
    assert paired_difference(c2c[:1], shuffled)["difference"] is None


def test_gap_closed_is_the_share_of_the_floor_to_ceiling_gap_on_common_items_with_a_resampled_interval():
    floor = {i: 0.0 for i in range(40)}
    ceiling = {i: 1.0 for i in range(40)}
    channel = {i: float(i % 4 == 0) for i in range(40)} | {"extra": 1.0}  # 10 of the 40 common items closed
    result = gap_closed(floor, ceiling, channel)
    assert result["n"] == 40 and result["gap_closed"] == 0.25
    assert (result["floor"], result["ceiling"], result["channel"]) == (0.0, 100.0, 25.0)
    low, high = result["ci95"]
    assert low < 0.25 < high and high - low < 0.35  # about 0.25 +- 1.96 * sqrt(0.25 * 0.75 / 40) = +-0.13
    assert gap_closed(floor, floor, channel)["gap_closed"] is None  # no gap to close
    assert gap_closed({}, ceiling, channel) == {"n": 0}


def closed_form_wilson(correct: int, n: int, z: float = 1.96) -> list[float]:
    """The Wilson score interval in its count form, (k + z²/2 ± z·sqrt(k(n-k)/n + z²/4)) / (n + z²), rounded as
    the summaries are: written independently of c2c.core.stats.wilson (which works from the proportion)."""
    centre, half = correct + z * z / 2, z * math.sqrt(correct * (n - correct) / n + z * z / 4)
    return [round((centre - half) / (n + z * z), 4), round((centre + half) / (n + z * z), 4)]


def test_wilson_interval():
    assert wilson(0, 0) == [0.0, 0.0]
    assert wilson(8, 10) == [0.4902, 0.9433]  # the published 95% interval for 8 of 10
    assert wilson(50, 100) == [0.4038, 0.5962]
    for correct, n in [(0, 5), (1, 5), (3, 5), (5, 5), (7, 19), (123, 500)]:
        assert wilson(correct, n) == pytest.approx(closed_form_wilson(correct, n), abs=1e-4), (correct, n)


def test_bad_input(tmp_path, bench):
    with pytest.raises(ValueError, match="unknown methods"):
        EvalConfig([bench], ["c2c", "magic"])
    with pytest.raises(ValueError, match="scoring"):
        EvalConfig([bench], ["c2c"], scoring="vibes")
    from c2c.data import DataError
    with pytest.raises(DataError):
        run_eval(EvalConfig(["no-such-bench"], ["receiver"], out=str(tmp_path)), _setup())
    setup = _setup()
    setup.fused = False  # `c2c eval` without --fuser: an untrained pair
    with pytest.raises(ValueError, match="--fuser"):
        run_eval(EvalConfig([bench], ["c2c"], out=str(tmp_path)), setup)


def test_method_limit_and_per_benchmark_split(tmp_path, bench):
    config = EvalConfig([f"{bench}:test"], ["receiver", "t2t"], scoring="cloze", out=str(tmp_path),
                        method_limits={"t2t": 2})
    setup = _setup()
    summary = run_eval(config, setup)
    methods = summary["benchmarks"]["tiny_mc"]["methods"]
    assert methods["receiver"]["n"] == 5 and methods["t2t"]["n"] == 2
    fuser_params = sum(p.numel() for p in setup.pair.fusers.parameters())  # the fusers, not the models
    assert fuser_params < sum(p.numel() for p in setup.pair.receiver.model.parameters())
    assert summary["receiver"] == "tiny-llama" and summary["fuser"] == {
        "path": None, "params": fuser_params, "translator_params": 0, "train_minutes": None}


def test_batched_throughput_mode(tmp_path, bench, monkeypatch):
    """A fake clock that only moves while the pair generates (0.25 s a batch) makes the rates exact."""
    import time
    setup, clock, calls = _setup(), [0.0], []
    generate = setup.pair.generate

    def timed_generate(prompts, **kwargs):
        calls.append((len(prompts), kwargs["fuse"], kwargs["max_new_tokens"]))
        clock[0] += 0.25
        return generate(prompts, **kwargs)
    run_eval(EvalConfig([bench], ["receiver"], scoring="cloze", out=str(tmp_path)), setup)  # real latencies
    monkeypatch.setattr(setup.pair, "generate", timed_generate)
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])  # the records above are reused, not re-timed
    config = EvalConfig([bench], ["receiver"], scoring="cloze", out=str(tmp_path), throughput_batch=2)
    throughput = run_eval(config, setup)["benchmarks"]["tiny_mc"]["throughput"]
    assert calls == [(2, False, 6), (2, False, 6), (1, False, 6), (2, True, 6), (2, True, 6), (1, True, 6)]
    assert throughput == {"batch_size": 2, "n": 5, "max_new_tokens": 6,  # 5 items in 3 batches of 0.25 s each
                          "receiver_items_per_s": round(5 / 0.75, 3), "c2c_items_per_s": round(5 / 0.75, 3)}


def test_batched_t2t_writes_the_same_texts_and_times_only_single_items(tmp_path, bench):
    """Two items run one at a time, then three with their sharer texts written in one batch: the records
    equal a run that did all five one at a time, and latency comes from the two single items only."""
    setup = _setup()
    alone = run_eval(EvalConfig([bench], ["t2t"], scoring="cloze", out=str(tmp_path / "alone")), setup)
    mixed = tmp_path / "mixed"
    run_eval(EvalConfig([bench], ["t2t"], scoring="cloze", out=str(mixed), method_limits={"t2t": 2}), setup)
    summary = run_eval(EvalConfig([bench], ["t2t"], scoring="cloze", out=str(mixed), t2t_batch=4), setup)

    def records(folder):
        return {r["id"]: r for r in map(json.loads, (folder / "tiny_mc/t2t.jsonl").open())}
    single, batched = records(tmp_path / "alone"), records(mixed)
    assert [r.get("sharer_batch") for r in batched.values()] == [None, None, 3, 3, 3]
    for item_id, record in batched.items():
        for key in ("background", "sharer_tokens", "prediction"):
            assert record[key] == single[item_id][key], (item_id, key)
        assert record["scores"] == pytest.approx(single[item_id]["scores"], abs=1e-4)
    t2t = summary["benchmarks"]["tiny_mc"]["methods"]["t2t"]
    assert t2t["n"] == 5 and t2t["accuracy"] == alone["benchmarks"]["tiny_mc"]["methods"]["t2t"]["accuracy"]
    unbatched = [r["latency_ms"] for r in batched.values() if "sharer_batch" not in r]
    assert t2t["latency_n"] == 2 and t2t["latency_ms_mean"] == pytest.approx(statistics.fmean(unbatched), abs=0.01)
    assert "(n=2)" in (mixed / "table.md").read_text()
    with pytest.raises(ValueError, match="t2t_batch"):
        EvalConfig([bench], ["t2t"], t2t_batch=0)


def test_the_receiver_baseline_is_the_pair_with_fusion_off():
    pair = make_pair(chat_template=False)
    prompt = "Question: What is the capital of France?\nAnswer:"
    continuations = [" Paris", " London"]
    baseline = state_continuations(PairScorer("receiver", pair, fuse=False).prefill(prompt), continuations)
    alone = state_continuations(ModelScorer("receiver", pair.receiver, chat=False).prefill(prompt), continuations)
    fused = state_continuations(PairScorer("c2c", pair).prefill(prompt), continuations)
    assert baseline == alone != fused  # one switch apart from C2C, and exactly the model alone


def test_the_table_names_the_split_each_benchmark_came_from():
    from c2c.evaluation.metrics import _split_text
    summary = {"split": "test", "benchmarks": {"arc": {"split": "test"}, "ceval": {"split": "val"}}}
    assert _split_text(summary) == "splits arc `test`, ceval `val`"
    summary["benchmarks"] = {"synthetic-1fact": {"split": "dev"}, "squad": {"split": "dev"}}
    assert _split_text(summary) == "split `dev`"
    summary["benchmarks"] = {"arc": {"split": "test"}}
    assert _split_text(summary) == "split `test`"
