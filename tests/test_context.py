"""Context handoff on tiny models: the translated channel, the fused-prompt channel with a context, the
cache-enrichment oracle, synthetic data and the evaluation methods."""

import copy
import dataclasses
import functools
import json

import pytest
import torch
from conftest import SMALL_FUSER
from tiny import tiny

from c2c.inputs.context import sharer_reading, with_context
from c2c.data import load_benchmark
from c2c.evaluation.evaluate import EvalConfig, EvalSetup, run_eval
from c2c.evaluation.scorers import EnrichedScorer, ModelScorer
from c2c.training.fit_translators import fit_pair, fitting_texts, split_texts
from c2c.model.pair import C2CModel, CheckpointError
from c2c.data.synthetic import NAMES, SPLITS, synthetic_items
from c2c.training.train import TrainConfig, train
from c2c.translator.config import TranslatorConfig
from c2c.translator.model import source_layers

QUESTION = "Question: What is Mira's pet?\nAnswer:"
CONTEXT = "Mira's pet is a dog."
CHOICES = [" dog", " cat", " pony"]


@functools.cache
def fitted(receiver: str = "llama", sharer: str = "gemma", chat: bool = False) -> C2CModel:
    """A tiny pair with its translator fitted on synthetic facts (seconds)."""
    torch.manual_seed(0)
    pair = C2CModel.create(tiny(receiver), [tiny(sharer)], translator=TranslatorConfig(window=1), chat_template=chat)
    train_texts, held_out = split_texts(fitting_texts([{"synthetic": 240, "facts": 2}]), 0.1, 0)
    pair.report = fit_pair(pair, train_texts, held_out, progress=False)
    return pair


def translator_size(pair, window: int) -> int:
    """Weights of the one sharer's translator, from the shapes: per receiver layer, one bias-free map from the K and V
    of its 2 * window + 1 sharer source layers to the receiver's K and V."""
    r, s = pair.receiver.shape, pair.sharers[0].shape
    sources = min(2 * window + 1, s.num_layers)
    return r.num_layers * (sources * 2 * s.num_kv_heads * s.head_dim) * (2 * r.num_kv_heads * r.head_dim)


def scores(pair, prompts, contexts=None, channel=None, fuse=True):
    batch = pair.prepare(prompts, sharer_contexts=contexts, context_channel=channel)
    return pair.choice_scores(batch, [CHOICES] * len(prompts), fuse=fuse)


def test_source_layers_window_the_proportional_partner():
    assert source_layers(4, 3, 1) == [[0, 1, 2]] * 4
    assert source_layers(5, 9, 1) == [[0, 1, 2], [1, 2, 3], [3, 4, 5], [5, 6, 7], [6, 7, 8]]
    assert source_layers(3, 3, 0) == [[0], [1], [2]]
    for receiver, sharer, window in [(30, 18, 1), (7, 12, 2), (4, 3, 1), (6, 6, 0)]:  # all layers global: the window
        widths = min(2 * window + 1, sharer)
        assert source_layers(receiver, sharer, window) == [
            list(range(min(max(p - window, 0), sharer - widths), min(max(p - window, 0), sharer - widths) + widths))
            for p in [round(i * (sharer - 1) / (receiver - 1)) for i in range(receiver)]]


def test_source_layers_read_the_nearest_global_layer_of_a_sliding_window_sharer():
    """Gemma-3-270m: 18 layers, global at 5, 11, 17; SmolLM2's 30 layers' partners spread over them. Every map
    reads one global layer (the nearest its partner) and the two layers nearest the partner."""
    sources = source_layers(30, 18, 1, [5, 11, 17])
    assert sources[0] == [0, 1, 5] and sources[2] == [1, 2, 5] and sources[9] == [4, 5, 6]  # partners 0, 1, 5
    assert sources[10] == [5, 6, 7] and sources[17] == [9, 10, 11] and sources[29] == [15, 16, 17]  # 6, 10, 17
    assert all(len(s) == 3 and any(layer in (5, 11, 17) for layer in s) for s in sources)


def test_identical_pair_translates_a_context_into_what_reading_it_gives():
    """Receiver as its own sharer: the fitted map is near the identity, so the translated context gives the
    choice scores of the receiver reading the context as text (the machinery's positive control)."""
    pair = fitted("llama", "llama")
    assert min(min(layer["r2_k"], layer["r2_v"]) for layer in pair.report["sharers"][0]["layers"]) > 0.99
    translated = scores(pair, [QUESTION], [CONTEXT])[0]
    reading = scores(pair, [with_context(QUESTION, CONTEXT)], fuse=False)[0]
    alone = scores(pair, [QUESTION], fuse=False)[0]
    assert (translated - reading).abs().max() < 0.02
    assert (reading - alone).abs().max() > 0.1  # the context matters, so the match above is not trivial


@pytest.mark.parametrize("receiver, sharer, chat", [("llama", "gemma", False), ("qwen", "llama", True),
                                                    ("llama", "qwen", True)])
def test_batched_rows_with_and_without_contexts_equal_one_at_a_time(receiver, sharer, chat):
    pair = fitted(receiver, sharer, chat)
    prompts = [QUESTION, "Question: Name a colour.\nAnswer:", QUESTION]
    contexts = [CONTEXT, None, "Oskar's favourite colour is teal. Mira's pet is a cat."]
    together = scores(pair, prompts, contexts)
    for prompt, context, batched in zip(prompts, contexts, together):
        alone = scores(pair, [prompt], [context] if context else None)[0]
        torch.testing.assert_close(batched, alone, atol=2e-4, rtol=1e-4)


def test_a_row_without_context_is_the_receiver_alone_and_fusion_off_ignores_contexts():
    pair = fitted()
    alone = scores(pair, [QUESTION], fuse=False)[0]
    assert torch.equal(scores(pair, [QUESTION])[0], alone)
    assert pair.generate(QUESTION, max_new_tokens=5, sharer_contexts=CONTEXT, fuse=False) == \
        pair.generate(QUESTION, max_new_tokens=5, fuse=False)
    assert pair.generate(QUESTION, max_new_tokens=5, sharer_contexts=CONTEXT) != \
        pair.generate(QUESTION, max_new_tokens=5, fuse=False)
    batch = pair.prepare([QUESTION], sharer_contexts=[CONTEXT])
    with pytest.raises(ValueError, match="without sharer_contexts"):
        pair.prefill(batch, fuse=False)


def test_fusion_off_means_one_thing_with_a_context_no_sharer_reads_it():
    """fuse=False is the receiver alone wherever a context is given: generate drops it (above; the server and the
    chat too), the evaluation's receiver scorer reads none (receiver-with-context puts it in the prompt itself),
    and a batch already laid out around a translated context is refused by prefill (above)."""
    from c2c.evaluation.scorers import PairScorer, state_continuations
    from c2c.inputs.context import with_context

    pair = fitted()
    receiver = PairScorer("receiver", pair, fuse=False)
    choices = [" red", " blue"]
    alone = state_continuations(receiver.prefill(QUESTION), choices)
    assert state_continuations(receiver.prefill(QUESTION, context=CONTEXT), choices) == alone
    assert state_continuations(receiver.prefill(QUESTION, other_prompt="Another question?"), choices) == alone
    reading = state_continuations(receiver.prefill(with_context(QUESTION, CONTEXT)), choices)
    assert reading != alone


@pytest.mark.parametrize("channel", ["translated", "fused"])
def test_a_context_is_read_without_its_surrounding_whitespace(channel):
    """A context file's last newline (`c2c generate --sharer-context`) is not part of what the sharer reads."""
    pair = fitted()
    if channel == "fused":
        torch.manual_seed(0)
        pair = C2CModel.create(tiny("llama"), [tiny("gemma")], SMALL_FUSER, chat_template=False)
        with torch.no_grad():
            for fuser in pair.layer_fusers():
                fuser.gate_logits.fill_(1.0)
    padded = scores(pair, [QUESTION], [f"\n {CONTEXT}\n\n"], channel)[0]
    assert torch.equal(padded, scores(pair, [QUESTION], [CONTEXT], channel)[0])
    assert not torch.equal(padded, scores(pair, [QUESTION], ["Mira's pet is a cat."], channel)[0])


def test_translated_section_stands_where_the_context_would():
    pair = fitted()
    batch = pair.prepare([QUESTION], sharer_contexts=[CONTEXT])
    (section,) = batch.sections
    text = pair.receiver.tokenizer.decode(batch.input_ids[0, :section.start])
    after = pair.receiver.tokenizer.decode(batch.input_ids[0, section.end:batch.prompt_length])
    assert text.endswith("Context:") and after.startswith("\nQuestion: What is Mira")
    assert section.contexts == [CONTEXT] and section.tokens == [section.end - section.start]
    view, tokens = sharer_reading(pair.sharers[0].tokenizer, CONTEXT)
    sharer_text = pair.sharers[0].tokenizer.decode([view.ids[t] for t in tokens])
    # one position per sharer token of the context (the tiny sharer has no apostrophe: it reads <unk>)
    assert len(tokens) == section.tokens[0] and sharer_text.replace(" ", "").replace("<unk>", "'") == \
        CONTEXT.replace(" ", "")


def test_checkpoint_with_translator_round_trips_in_half_precision(tmp_path):
    pair = fitted()
    pair.save_pretrained(tmp_path / "t")
    from safetensors.torch import load_file
    stored = load_file(str(tmp_path / "t" / "fuser.safetensors"))
    assert stored["translators.0.maps.0.weight"].dtype == torch.float16 and not any(
        k.startswith("0.") for k in stored)  # no fusers saved
    loaded = C2CModel.from_pretrained(tmp_path / "t", receiver=pair.receiver, sharers=pair.sharers)
    torch.testing.assert_close(scores(loaded, [QUESTION], [CONTEXT])[0], scores(pair, [QUESTION], [CONTEXT])[0],
                               atol=5e-3, rtol=1e-3)
    with pytest.raises(CheckpointError, match="another pair"):
        C2CModel.from_pretrained(tmp_path / "t", receiver=tiny("qwen"), sharers=pair.sharers)
    weights = tmp_path / "t" / "fuser.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        C2CModel.from_pretrained(tmp_path / "t", receiver=pair.receiver, sharers=pair.sharers)


def test_the_fit_records_the_longest_text_and_a_longer_context_warns_once(tmp_path):
    """Issue 31: a context longer than any text the maps were fitted on exits 0 and may not reach the receiver; the
    fit records the longest text (in sharer tokens, saved with the checkpoint) and a longer context warns, naming
    both lengths, once per pair."""
    import warnings

    from c2c.inputs.context import ContextWarning, context_length
    pair = fitted()
    texts, _ = split_texts(fitting_texts([{"synthetic": 240, "facts": 2}]), 0.1, 0)
    longest = max(context_length(tiny("gemma").tokenizer, t) for t in texts)
    assert pair.config.sharers[0].fitted_context_tokens == longest == pair.report["sharers"][0]["longest_text_tokens"]
    pair.save_pretrained(tmp_path / "fitted")
    loaded = C2CModel.from_pretrained(tmp_path / "fitted", tiny("llama"), [tiny("gemma")])
    assert loaded.config.sharers[0].fitted_context_tokens == longest
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.prepare([QUESTION], sharer_contexts=[CONTEXT])  # within what it was fitted on: no warning
    long = " ".join([CONTEXT] * 12)
    length = context_length(tiny("gemma").tokenizer, long)
    assert longest < length
    with pytest.warns(ContextWarning, match=rf"the context is {length} tokens for sharer tiny-gemma, longer than the "
                                            rf"longest text its translator was fitted on \({longest} tokens\)"):
        loaded.prepare([QUESTION], sharer_contexts=[long])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded.prepare([QUESTION], sharer_contexts=[long])  # once per pair: a chat or a server does not repeat it


def test_bad_contexts_are_clear_errors():
    pair = fitted()
    with pytest.raises(ValueError, match="sharer context is empty"):
        pair.prepare([QUESTION], sharer_contexts=["  "])
    with pytest.raises(ValueError, match="one entry per prompt"):
        pair.prepare([QUESTION, QUESTION], sharer_contexts=[CONTEXT])
    with pytest.raises(ValueError, match=r"tokens for sharer tiny-gemma, over the 1024 positions it takes"):
        pair.prepare([QUESTION], sharer_contexts=[CONTEXT * 200])
    capped = copy.deepcopy(pair.config.translator)
    capped.max_context_tokens = 4
    with pytest.raises(ValueError, match="over the translator's max_context_tokens=4"):
        C2CModel(pair.receiver, pair.sharers, dataclasses.replace(pair.config, translator=capped)).prepare(
            [QUESTION], sharer_contexts=[CONTEXT])
    windowed = C2CModel.create(tiny("gemma"), [tiny("llama")], translator=TranslatorConfig(), chat_template=False)
    with pytest.raises(ValueError, match="sliding window of 8"):
        windowed.prepare([QUESTION], sharer_contexts=[CONTEXT])
    with pytest.raises(ValueError, match="context_channel"):
        pair.prepare([QUESTION], sharer_contexts=[CONTEXT], context_channel="telepathy")


def test_fused_prompt_channel_reads_the_context_ahead_of_the_question():
    torch.manual_seed(0)
    pair = C2CModel.create(tiny("llama"), [tiny("gemma")], SMALL_FUSER, chat_template=True)
    with torch.no_grad():
        for fuser in pair.layer_fusers():
            fuser.gate_logits.fill_(1.0)
    batch = pair.prepare([QUESTION], sharer_contexts=[CONTEXT])
    decode = lambda ids: pair.sharers[0].tokenizer.decode(ids).replace("<unk>", "'")  # noqa: E731 (no ' in its vocab)
    sharer_ids = batch.sharer_ids[0][0]
    assert "Context: " + CONTEXT + "\n" + QUESTION in decode(sharer_ids)
    fused = batch.positions[0][0]

    def aligned(b):  # (receiver token, sharer token) text of every fused position
        return [(pair.receiver.tokenizer.decode(b.input_ids[0, c]), decode(b.sharer_ids[0][0][p]))
                for c, p in enumerate(b.positions[0][0].tolist()) if p >= 0]
    assert len(aligned(batch)) > 5 and aligned(batch) == aligned(pair.prepare([QUESTION]))  # the same question tokens
    question_start = decode(sharer_ids).index("Question")
    assert all(len(decode(sharer_ids[:p + 1])) > question_start for p in fused.tolist() if p >= 0)
    other = scores(pair, [QUESTION], ["Mira's pet is a cat."])[0]
    assert not torch.allclose(scores(pair, [QUESTION], [CONTEXT])[0], other)


def test_enriched_oracle_keeps_the_question_positions_rerotated():
    model = tiny("llama")
    state = EnrichedScorer("receiver-enriched", model, chat=False).prefill(QUESTION, context=CONTEXT)
    plain = ModelScorer("receiver", model, chat=False).prefill(QUESTION)
    assert torch.equal(state.input_ids[:, -3:], plain.input_ids[:, -3:])
    header = len(model.tokenizer("Context:")["input_ids"])
    assert state.input_ids.shape[1] == plain.input_ids.shape[1] + header + 1  # "Context:" and "\n" stay
    assert state.cache.get_seq_length() == state.input_ids.shape[1] - 1
    with pytest.raises(ValueError, match="needs items with a context"):
        EnrichedScorer("receiver-enriched", model, chat=False).prefill(QUESTION)


def test_synthetic_splits_are_disjoint_balanced_and_seeded():
    items = {split: synthetic_items(split, 300, facts=3) for split in SPLITS}
    names = {split: {w for item in items[split] for w in item["context"].split() if w.endswith("'s")} for split in SPLITS}
    answers = {split: {item["choices"][item["answer"]] for item in items[split]} for split in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not names[a] & names[b] and not answers[a] & answers[b]
    positions = [item["answer"] for item in items["test"]]
    assert [positions.count(i) for i in range(3)] == [100, 100, 100]
    assert synthetic_items("test", 300, facts=3) == items["test"]
    assert synthetic_items("test", 300, facts=3, seed=1) != items["test"]
    for item in items["test"]:
        assert item["choices"][item["answer"]] in item["context"] and len(set(item["choices"])) == 3
    assert len(set(NAMES)) == len(NAMES) >= 87  # about 30 names per split
    bench = load_benchmark("synthetic-1fact", "dev", limit=10)  # no data dir needed
    assert len(bench.items) == 10 and all(i.context for i in bench.items)


def test_long_synthetic_contexts_give_people_several_facts_but_ask_about_one():
    """Up to 64 facts per context (issue 32's length axis): past the 33 names of a split, people get several
    facts, never two of one attribute, so every question has one answer in the context."""
    import re
    assert synthetic_items("test", 2, facts=1)[0]["context"] == "Yusuf's pet is a ferret."  # as before the long ones
    for item in synthetic_items("test", 20, facts=64):
        facts = re.findall(r"(\w+)'s (home city|favourite colour|pet|job|favourite fruit) is (?:a )?(\w+)\.",
                           item["context"])
        assert len(facts) == 64 == len({(name, attribute) for name, attribute, _ in facts})
        person, asked = re.match(r"What is (\w+)'s (.+)\?", item["question"]).groups()
        assert [value for name, attribute, value in facts if (name, attribute) == (person, asked)] == \
            [item["choices"][item["answer"]]]
    with pytest.raises(ValueError, match="within 1..64, got 65"):
        synthetic_items("test", 1, facts=65)


def test_fitting_texts_join_a_documents_consecutive_contexts_into_long_texts():
    from c2c.data.rows import MCItem
    from c2c.training.fit_translators import joined_contexts
    items = [MCItem(str(i), "Q?", [], -1, context=c, title=t) for i, (t, c) in enumerate(
        [("A", "a1"), ("A", "a1"), ("A", "a2"), ("A", "a3"), ("B", "b1"), ("A", "a4"), ("B", "b2")])]
    assert joined_contexts(items, 2) == ["a1\n\na2", "a3\n\na4", "b1\n\nb2"]
    assert joined_contexts(items, 3) == ["a1\n\na2\n\na3", "a4", "b1\n\nb2"]


def test_context_benchmarks_parse_contexts(tmp_path):
    generic = tmp_path / "ctx.jsonl"
    generic.write_text(json.dumps({"id": "a", "question": "Q?", "choices": ["x", "y"], "answer": 1,
                                   "context": "Some notes."}) + "\n" +
                       json.dumps({"id": "b", "question": "R?", "choices": ["x", "y"], "answer": 0}) + "\n")
    first, second = load_benchmark(str(generic)).items
    assert first.context == "Some notes." and second.context is None
    (tmp_path / "kvcomm").mkdir()
    (tmp_path / "kvcomm" / "tipsheets.jsonl").write_text(json.dumps(
        {"prompt_A": "Atlas is up.", "prompt_B": "Pick one:", "options": ["Atlas", "Sable", "Trace"],
         "label": "Atlas", "attitudes": {}}) + "\n")
    (item,) = load_benchmark("tipsheets", "test", data_dir=tmp_path).items
    assert (item.context, item.question, item.answer) == ("Atlas is up.", "Pick one:", 0)
    (tmp_path / "arc" / "ARC-Easy").mkdir(parents=True)
    row = {"id": "e1", "question": {"stem": "Which?", "choices": [
        {"label": "A", "text": "ice", "para": "Ice is cold"}, {"label": "B", "text": "fire", "para": "Fire is hot."}]},
        "answerKey": "B"}
    bare = {"id": "e2", "question": {"stem": "Or?", "choices": [{"label": "A", "text": "a"},
                                                                  {"label": "B", "text": "b"}]}, "answerKey": "A"}
    (tmp_path / "arc" / "ARC-Easy" / "dev.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(bare) + "\n")
    bench = load_benchmark("arc-easy-evidence", "dev", data_dir=tmp_path)
    assert [i.context for i in bench.items] == ["Ice is cold. Fire is hot."]
    assert bench.report["dropped"] == {"no evidence": 1}
    assert load_benchmark("arc-easy", "dev", data_dir=tmp_path).items[0].context is None


def test_every_context_method_end_to_end(tmp_path):
    pair = fitted()
    setup = EvalSetup(pair, lora_receiver=tiny("llama"), t2t_tokens=3)
    methods = ["receiver", "receiver-with-context", "sharer-with-context", "t2t", "c2c-translated",
               "c2c-translated-shuffled", "lora-receiver", "receiver-enriched"]
    summary = run_eval(EvalConfig(["synthetic-1fact"], methods, scoring="cloze", limit=6, out=str(tmp_path)), setup)
    result = summary["benchmarks"]["synthetic-1fact"]
    assert set(result["methods"]) == set(methods) and all(m["n"] == 6 for m in result["methods"].values())
    gain = result["paired"]["c2c-translated - c2c-translated-shuffled"]
    assert gain["n"] == 6
    records = [json.loads(line) for line in (tmp_path / "synthetic-1fact" / "c2c-translated-shuffled.jsonl").open()]
    assert all(r["partner"] != r["id"] for r in records)
    t2t = [json.loads(line) for line in (tmp_path / "synthetic-1fact" / "t2t.jsonl").open()]
    assert all(r["sharer_tokens"] <= 3 for r in t2t)
    assert summary["fuser"]["translator_params"] == translator_size(pair, window=1)
    with pytest.raises(ValueError, match="needs items with a context"):
        run_eval(EvalConfig([str(_plain_file(tmp_path))], ["receiver-with-context"], scoring="cloze",
                            out=str(tmp_path / "plain")), setup)


def _plain_file(tmp_path):
    path = tmp_path / "plain.jsonl"
    path.write_text(json.dumps({"id": "p", "question": "Q?", "choices": ["a", "b"], "answer": 0}) + "\n")
    return path


def test_translator_recipe_fits_saves_and_reports(tmp_path):
    recipe = TrainConfig(output=str(tmp_path / "run"), method="translator", chat_template=False,
                         data=[{"synthetic": 60, "facts": 1}], eval_examples=6, translator={"window": 0})
    output = train(recipe, receiver=tiny("llama"), sharers=[tiny("gemma")])
    report = json.loads((output / "fit_report.json").read_text())
    assert report["held_out_texts"] == 6 and report["texts"] == 54 and len(report["sharers"][0]["layers"]) == 4
    loaded = C2CModel.from_pretrained(output, receiver=tiny("llama"), sharers=[tiny("gemma")])
    assert loaded.config.fuser is None and loaded.config.translator.window == 0 and len(loaded.translators) == 1
    maps = loaded.translators[0].maps
    assert len(maps) == 4 and all(linear.weight.abs().sum() > 0 for linear in maps)  # fitted, not the zero init
    # window 0: one sharer layer per map; the tiny Gemma's layers 0 and 1 see a sliding window: its global layer 2
    assert loaded.translators[0].sources == [[2], [2], [2], [2]] == loaded.config.sharers[0].translator_sources
    with pytest.raises(ValueError, match="translator window"):
        TrainConfig(method="translator", data=["x.json"], translator={"window": -1})


@pytest.mark.parametrize("method", ["c2c", "lora"])
def test_training_on_context_data_gives_the_context_to_the_sharers_only(tmp_path, monkeypatch, method):
    seen = []
    original = C2CModel.prepare

    def spy(self, prompts, *args, sharer_contexts=None, **kwargs):
        seen.append(sharer_contexts)
        return original(self, prompts, *args, sharer_contexts=sharer_contexts, **kwargs)
    monkeypatch.setattr(C2CModel, "prepare", spy)
    data = [{"benchmark": "synthetic-1fact", "split": "train", "prompt_style": "cloze", "target": "choices", "limit": 6}]
    recipe = TrainConfig(output=str(tmp_path / method), method=method, objective="choices", chat_template=False,
                         data=data, eval_examples=2, steps=1, batch_size=2, fuser=SMALL_FUSER.to_dict(),
                         sharer_cache=False, lora={"r": 2, "lora_alpha": 4, "lora_dropout": 0.0})
    train(recipe, receiver=tiny("llama"), sharers=[tiny("gemma")])
    training_calls = [c for c in seen if c is not None]
    if method == "c2c":
        assert training_calls and all(all("'s" in text for text in call) for call in training_calls)
    else:
        assert not training_calls  # the LoRA receiver is trained without any context


def test_format_1_checkpoints_without_translator_still_load(tmp_path):
    pair = C2CModel.create(tiny("llama"), [tiny("gemma")], SMALL_FUSER)
    pair.save_pretrained(tmp_path / "old")
    config_path = tmp_path / "old" / "c2c_config.json"
    config = json.loads(config_path.read_text())
    del config["translator"]
    config["format_version"] = 1
    config_path.write_text(json.dumps(config))
    loaded = C2CModel.from_pretrained(tmp_path / "old", receiver=tiny("llama"), sharers=[tiny("gemma")])
    assert loaded.translators is None and loaded.config.fuser == pair.config.fuser
    config.update(fuser=None)
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="neither a fuser nor a translator"):
        C2CModel.from_pretrained(tmp_path / "old", receiver=tiny("llama"), sharers=[tiny("gemma")])


def test_inspect_reports_the_translator():
    from c2c.model.inspection import format_report, inspect_pair
    report = inspect_pair(fitted())
    assert report["fuser"] is None and report["translator_parameters"] == translator_size(fitted(), window=1)
    assert report["sharers"][0]["translator_sources"] == [[0, 1, 2]] * 4
    assert "context translator" in format_report(report) and "fuser: none" in format_report(report)


def test_translator_recipe_chooses_its_ridge_on_eval_data(tmp_path):
    recipe = TrainConfig(output=str(tmp_path / "run"), method="translator", chat_template=False,
                         data=[{"synthetic": 40, "facts": 1}], eval_data=[{"synthetic": 5, "facts": 1, "split": "dev"}],
                         eval_examples=5, translator={"window": 0, "ridge": [1e-3, 1.0]})
    report = json.loads((train(recipe, receiver=tiny("llama"), sharers=[tiny("gemma")]) / "fit_report.json").read_text())
    assert (report["texts"], report["held_out_texts"]) == (40, 5)
    layers = report["sharers"][0]["layers"]
    assert len(layers) == 4 and all(layer["ridge_k"] in (1e-3, 1.0) for layer in layers)  # one per receiver layer


def test_a_benchmark_spec_can_set_its_own_split_and_limit(tmp_path):
    setup = EvalSetup(C2CModel.create(tiny("llama"), [tiny("gemma")], chat_template=False), fused=False)
    summary = run_eval(EvalConfig(["synthetic-1fact:dev:4", "synthetic-3fact"], ["receiver"], scoring="cloze",
                                  limit=3, out=str(tmp_path)), setup)
    assert {n: b["n"] for n, b in summary["benchmarks"].items()} == {"synthetic-1fact": 4, "synthetic-3fact": 3}
    assert summary["benchmarks"]["synthetic-1fact"]["split"] == "dev"
    with pytest.raises(ValueError, match="NAME:SPLIT:LIMIT"):
        run_eval(EvalConfig(["synthetic-1fact:dev:many"], ["receiver"], scoring="cloze", out=str(tmp_path)), setup)


def test_gradients_reach_every_translator_map_and_match_a_finite_difference():
    """The receiver's passes after a translated section keep their graph, so the loss on what follows the context
    reaches every map (float64 models and maps; the loss itself is computed on float32 logits)."""
    torch.manual_seed(0)
    receiver, sharer = copy.deepcopy(tiny("llama")), copy.deepcopy(tiny("gemma"))  # the shared ones stay float32
    pair = C2CModel.create(receiver, [sharer], translator=TranslatorConfig(window=1), chat_template=False)
    for model in (pair.receiver.model, pair.sharers[0].model, pair.translators):
        model.double()
    maps = pair.translators[0].maps
    with torch.no_grad():
        for linear in maps:
            linear.weight.normal_(0, 0.05)
    batch = pair.prepare([QUESTION], responses=[" dog"], sharer_contexts=[CONTEXT], context_channel="translated")

    def loss() -> torch.Tensor:
        return pair(batch, reduction="sum")[1]
    loss().backward()
    assert all(linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0 for linear in maps)
    weight = maps[0].weight
    index = tuple(int(i) for i in (weight.grad.abs() == weight.grad.abs().max()).nonzero()[0])
    eps = 1e-3
    with torch.no_grad():
        weight[index] += eps
        above = float(loss())
        weight[index] -= 2 * eps
        below = float(loss())
        weight[index] += eps
    assert (above - below) / (2 * eps) == pytest.approx(float(weight.grad[index]), rel=1e-3)
    with torch.no_grad():  # without the fix no gradient reached the maps: the section must matter to the loss
        assert float(loss()) != float(pair(pair.prepare([QUESTION], responses=[" dog"]), fuse=False, reduction="sum")[1])
