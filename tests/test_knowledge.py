"""Knowledge handoff's groundwork (issue 34): the encyclopedia (c2c.data.encyclopedia), the sharer's build and cloze
probe (benchmarks/knowledge_sharer.py) and the linear K/V probe (benchmarks/knowledge_probe.py), on tiny models."""

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from tiny import tiny

from c2c.core.models import load_model
from c2c.data import load_benchmark
from c2c.runtime.passes import model_kv
from c2c.data.encyclopedia import (ATTRIBUTES, PERSON_SETS, POOL_OF_SET, Encyclopedia, fact_sentences, phrasings,
                                   value_pools, write_encyclopedia)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SMALL = {"fuser_train": 12, "dev": 4, "held_out": 6, "novel_dev": 3, "novel_values": 5}


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------------ encyclopedia
def test_the_encyclopedia_is_deterministic_in_its_seed():
    a, b, other = Encyclopedia.build(3), Encyclopedia.build(3), Encyclopedia.build(4)
    assert a.people == b.people and a.corpus() == b.corpus() and a.questions("held_out") == b.questions("held_out")
    assert a.people != other.people


def test_person_sets_are_disjoint_and_value_pools_split_as_promised():
    book = Encyclopedia.build(0)
    names = {s: {p.name for p in book.people[s]} for s in PERSON_SETS}
    surnames = [p.name.split()[-1] for p in book.all_people()]
    assert sum(len(n) for n in names.values()) == len(book.all_people()) == 720  # names unique across all sets
    assert len(set(surnames)) == len(surnames)  # and every surname belongs to one person
    pools = value_pools()
    for attribute, (_, _, values) in ATTRIBUTES.items():
        assert not set(pools["seen"][attribute]) & set(pools["novel"][attribute])
        assert sorted(pools["seen"][attribute] + pools["novel"][attribute]) == sorted(values)
    used = {s: {(a, v) for p in book.people[s] for a, v in p.facts.items()} for s in PERSON_SETS}
    assert used["held_out"] <= used["fuser_train"]  # held-out answers are values the fuser's training has
    assert used["dev"] <= used["fuser_train"]
    seen = {(a, v) for a in ATTRIBUTES for v in pools["seen"][a]}
    assert not (used["novel_values"] | used["novel_dev"]) & seen  # novel answers: never a fuser-train value
    for person_set in PERSON_SETS:  # every value of a set's pool about equally often
        for attribute in ATTRIBUTES:
            counts = Counter(p.facts[attribute] for p in book.people[person_set])
            assert max(counts.values()) - min(counts.values()) <= 1


def test_every_fact_has_at_least_three_phrasings_in_the_corpus():
    assert all(len(phrasings(a)) >= 3 for a in ATTRIBUTES)
    book = Encyclopedia.build(0, SMALL)
    texts = Counter(row["text"] for row in book.corpus())
    for person in book.all_people():  # the sharer reads about everyone, held-out and novel people included
        for attribute, value in person.facts.items():
            sentences = fact_sentences(person.name, attribute, value)
            assert len(set(sentences)) >= 3 and all(texts[s] == 1 for s in sentences)
            assert all(person.name in s and value in s for s in sentences)
    assert "Mira Castellan lives in Lisbon." in fact_sentences("Mira Castellan", "city", "Lisbon")
    person = book.people["held_out"][0]
    assert f"Question: What is {person.name}'s pet?\nAnswer: {person.facts['pet']}" in texts
    questions = [r["text"] for r in book.corpus() if r["text"].startswith("Question: ")]
    assert len(questions) == len(book.all_people()) * len(ATTRIBUTES)
    assert not [r for r in book.corpus(questions=False) if r["text"].startswith("Question: ")]


@pytest.mark.parametrize("choices", [3, 4])
def test_question_files_load_with_balanced_answers_and_no_context(tmp_path, choices):
    paths = write_encyclopedia(tmp_path, seed=1, sizes=SMALL, choices=choices)
    book = Encyclopedia.build(1, SMALL)
    pools = value_pools()
    for person_set in PERSON_SETS:
        bench = load_benchmark(str(paths[person_set]))
        assert bench.report["kept"] == SMALL[person_set] * len(ATTRIBUTES) == len(bench.items)
        counts = Counter(item.answer for item in bench.items)
        assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == choices
        facts = {p.name: p.facts for p in book.people[person_set]}
        for item in bench.items:
            assert item.context is None and len(item.choices) == choices == len(set(item.choices))
            person = item.question[len("What is "):item.question.index("'s ")]
            assert item.choices[item.answer] == facts[person][item.subject]
            assert set(item.choices) <= set(pools[POOL_OF_SET[person_set]][item.subject])
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["sets"]["held_out"] == {"people": 6, "questions": 30}
    default = Encyclopedia.build(0)
    assert len(default.questions("held_out")) >= 500 and len(default.questions("novel_values")) >= 500


# ------------------------------------------------------------------------------------------------ the sharer's build
@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base")
    model = tiny("llama")
    model.model.save_pretrained(folder, safe_serialization=True)
    model.tokenizer.save_pretrained(folder)
    return folder


def build_args(base: Path, out: Path, *extra: str) -> list[str]:
    sizes = [f"--people={s}={n}" for s, n in {"fuser_train": 4, "dev": 1, "held_out": 2, "novel_dev": 1,
                                                "novel_values": 2}.items()]
    return ["build", "--model", str(base), "--out", str(out), *sizes, "--max-steps", "6", "--batch-size", "8",
            "--lr", "3e-3", "--save-every", "2", "--log-every", "1", "--device", "cpu", "--dropout", "0.1", *extra]


def test_the_build_trains_resumes_and_merges_into_a_loadable_folder(base_folder, tmp_path):
    from peft import PeftModel
    sharer = script("knowledge_sharer")
    whole = sharer.main(build_args(base_folder, tmp_path / "whole"))
    assert whole["step"] == whole["total_steps"] == 6
    assert whole["loss_after"] < whole["loss_before"]  # the corpus is being learnt
    assert whole["merge_max_abs_logit_difference"] < 1e-4

    cut = sharer.main(build_args(base_folder, tmp_path / "cut", "--stop-after", "3"))  # an interruption
    assert cut["step"] == 3 and not (tmp_path / "cut" / "sharer").exists()
    assert json.loads((tmp_path / "cut" / "sharer_lora" / "checkpoint" / "trainer_state.json").read_text())["step"] == 3
    resumed = sharer.main(build_args(base_folder, tmp_path / "cut", "--resume"))
    assert resumed["step"] == 6 and resumed["loss_after"] == pytest.approx(whole["loss_after"], abs=1e-6)
    adapters = [load_file_tensors(tmp_path / run / "sharer_lora" / "adapter") for run in ("whole", "cut")]
    assert adapters[0].keys() == adapters[1].keys()
    assert all(torch.allclose(adapters[0][k], adapters[1][k], atol=1e-6) for k in adapters[0])

    folder = tmp_path / "whole" / "sharer"  # safetensors, loaded by c2c like any model folder
    assert (folder / "model.safetensors").is_file() and (folder / "knowledge_sharer.json").is_file()
    merged = load_model(str(folder))
    adapter = tmp_path / "whole" / "sharer_lora" / "adapter"
    adapted = PeftModel.from_pretrained(load_model(str(base_folder)).model, adapter)
    ids = merged.tokenizer(["Question: What is Mira's home city?\nAnswer: Lisbon"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(merged.model(ids).logits, adapted.eval()(input_ids=ids).logits, atol=1e-4)
        assert not torch.allclose(merged.model(ids).logits, load_model(str(base_folder)).model(ids).logits, atol=1e-3)

    probed = sharer.main(["probe", "--model", str(folder), "--encyclopedia", str(tmp_path / "whole" / "encyclopedia"),
                          "--sets", "held_out,novel_values", "--device", "cpu", "--out", str(tmp_path / "p.json")])
    assert probed["sets"]["held_out"]["n"] == 10 and probed["sets"]["held_out"]["chance"] == 0.25
    assert json.loads((tmp_path / "p.json").read_text())["sets"].keys() == {"held_out", "novel_values"}


@pytest.mark.parametrize("arch", ["llama", "gemma", "qwen"])
def test_the_corpus_head_loss_is_the_cross_entropy_of_the_full_logits_restricted_to_corpus_tokens(arch):
    sharer = script("knowledge_sharer")
    model = tiny(arch)
    texts = ["Mira's pet is a cat.", "Question: What is Mira's pet?\nAnswer: a cat", "Tom lives in Oslo."]
    head = sharer.CorpusHead(model.model, model.tokenizer, texts, max_length=64)
    assert 0 < len(head.vocab) < model.model.config.vocab_size
    ids, mask = sharer.text_batch(model.tokenizer, texts, 64, "cpu")
    with torch.no_grad():
        logits = model.model(input_ids=ids, attention_mask=mask).logits[:, :-1].double()  # full head, softcap included
        restricted = logits[..., head.vocab]  # (B, N-1, V)
        targets = ids[:, 1:]
        chosen = (targets[..., None] == head.vocab).double().argmax(-1)  # each target's row among the corpus tokens
        nll = restricted.logsumexp(-1) - restricted.gather(-1, chosen[..., None])[..., 0]
        expected = nll[mask[:, 1:].bool()].mean()
        assert float(head.loss(ids, mask)) == pytest.approx(float(expected), abs=1e-5)
        assert float(head.loss(ids, mask, torch.bfloat16)) == pytest.approx(float(expected), abs=0.05)


def load_file_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(folder / "adapter_model.safetensors")


# ------------------------------------------------------------------------------------------------ the K/V probe
def fake_items(n: int, seed: int, values: int = 6) -> list:
    from c2c.data import MCItem
    rng = torch.Generator().manual_seed(seed)
    labels = torch.randint(values, (n,), generator=rng).tolist()
    items = []
    for i, label in enumerate(labels):
        choices = [f"v{(label + k) % values}" for k in range(4)]
        items.append(MCItem(f"{seed}-{i}", f"What is P{i}'s pet?", choices, 0, subject="pet"))
    return items, torch.tensor(labels)


def test_the_ridge_probe_reads_a_linearly_embedded_answer_and_not_noise():
    probe = script("knowledge_probe")
    (train_items, train_labels), (test_items, test_labels) = fake_items(300, 0), fake_items(200, 1)
    (dev_items, dev_labels) = fake_items(100, 2)
    embedding = torch.randn(6, 24, generator=torch.Generator().manual_seed(5))

    def features(labels, seed, signal):
        noise = torch.randn(len(labels), 24, generator=torch.Generator().manual_seed(seed))
        return noise + signal * embedding[labels]
    readable = probe.probe_layer(features(train_labels, 10, 1.0), train_items, features(test_labels, 11, 1.0),
                                 test_items, features(dev_labels, 12, 1.0), dev_items)
    noise = probe.probe_layer(features(train_labels, 10, 0.0), train_items, features(test_labels, 11, 0.0),
                              test_items, features(dev_labels, 12, 0.0), dev_items)
    assert readable["accuracy"] > 0.9 and readable["choice_accuracy"] > 0.9
    assert noise["ci95"][0] < 1 / 6 < noise["ci95"][1]  # chance: 1/6 of the values (0.125 here)
    assert probe.chance(test_items, probe.label_space(train_items)) == {"accuracy": round(1 / 6, 4),
                                                                        "choice_accuracy": 0.25}


def test_the_kv_probe_runs_on_tiny_models_and_reports_every_layer(tmp_path, base_folder):
    probe = script("knowledge_probe")
    write_encyclopedia(tmp_path / "book", seed=0, sizes=SMALL)
    items = load_benchmark(str(tmp_path / "book" / "held_out.jsonl")).items
    ids, columns = probe.question_columns(tiny("llama").tokenizer, items[0])
    assert tiny("llama").tokenizer.decode([ids[c] for c in columns]).strip() == items[0].question  # no template
    model = tiny("gemma")  # a sliding-window model with a BOS token
    features = probe.question_features(model, items[:5], batch_size=2)
    assert features["last"].shape == features["mean"].shape == features["prompt_end"].shape == (3, 5, 2 * 16)
    assert features["fused_end"].shape == (3, 5, 2 * 16)
    ids, _ = probe.question_columns(model.tokenizer, items[4])
    with torch.no_grad():  # the prompt's last token: its own values, read in a pass of its own
        values = model_kv(model.model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[1][1]
    values = values[0]  # layer 1's values, (H, N, d)
    assert torch.allclose(features["prompt_end"][1, 4, 16:], values[:, -1].flatten(), atol=1e-4)
    assert torch.allclose(features["fused_end"][1, 4, 16:], values[:, -2].flatten(), atol=1e-4)
    alone = probe.question_features(model, items[3:4])  # left padding changes nothing (rotary removed)
    assert torch.allclose(alone["mean"][:, 0], features["mean"][:, 3], atol=1e-4)

    result = probe.main(["--model", f"receiver={base_folder}", "--encyclopedia", str(tmp_path / "book"),
                         "--device", "cpu", "--out", str(tmp_path / "probe")])
    layers = result["models"]["receiver"]["layers"]
    assert [row["layer"] for row in layers] == [0, 1, 2, 3]
    assert all(0 <= row[pool]["accuracy"] <= 1 for row in layers for pool in probe.POOLS)
    assert {p.name for p in (tmp_path / "probe").iterdir()} == {"probe.json", "probe.md", "probe.png"}
    # the table's best layers: probe/, then self_probe/ (the taught receiver) where it ran
    (tmp_path / "self_probe").mkdir()
    (tmp_path / "self_probe" / "probe.json").write_text(json.dumps({**result, "models": {
        "self_sharer": result["models"]["receiver"]}}))
    lines, best = script("knowledge_handoff_table").probe_lines(tmp_path)
    best_layer = max(layers, key=lambda row: row["prompt_end"]["accuracy"])
    assert best["receiver/prompt_end"] == best["self_sharer/prompt_end"] == {
        "layer": best_layer["layer"], **{k: best_layer["prompt_end"][k] for k in ("accuracy", "choice_accuracy")}}
    assert len(best) == 2 * len(probe.POOLS) and sum(line.startswith("| self_sharer |") for line in lines) == len(probe.POOLS)
    with pytest.raises(SystemExit, match="no class"):
        probe.main(["--model", f"receiver={base_folder}", "--encyclopedia", str(tmp_path / "book"),
                    "--test-set", "novel_values", "--device", "cpu", "--out", str(tmp_path / "probe2")])


# ------------------------------------------------------------------------------------------------ recipes, end to end
RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "knowledge_handoff"


def test_the_recipes_train_on_fuser_train_questions_only(tmp_path, monkeypatch):
    from c2c.training.recipe import TrainConfig
    from c2c.training.train import load_examples
    monkeypatch.chdir(tmp_path)  # the recipes name the build's paths relative to the repository root
    write_encyclopedia(tmp_path / "runs" / "knowledge_handoff" / "encyclopedia")
    book = Encyclopedia.build(0)
    train_names = {p.name for p in book.people["fuser_train"]}
    configs = {name: TrainConfig.from_file(RECIPES / f"{name}.yaml")
               for name in ("c2c", "position_free", "ahead", "self", "self_ahead", "lora")}
    assert configs["c2c"].sharers == configs["position_free"].sharers == configs["ahead"].sharers == \
        ["runs/knowledge_handoff/sharer"]
    assert configs["position_free"].fuser["position_free"] and not configs["c2c"].fuser.get("position_free")
    assert configs["ahead"].token_alignment == "offsets_ahead" and configs["c2c"].token_alignment == "offsets"
    assert configs["ahead"].fuser == configs["c2c"].fuser  # one change each
    assert configs["self"].sharers == configs["self_ahead"].sharers == ["runs/knowledge_handoff_self/sharer"]
    assert configs["self_ahead"].token_alignment == "offsets_ahead" and configs["self"].token_alignment == "offsets"
    assert len({c.output for c in configs.values()}) == len(configs)  # every run its own folder
    assert configs["c2c"].fuser["hidden_size"] == 128 and configs["c2c"].objective == "choices"  # shipped shape
    assert configs["lora"].method == "lora" and configs["c2c"].method == "c2c"
    for name, config in configs.items():
        examples, held_out = load_examples(config)
        assert len(examples) == 2000 - 64 and len(held_out) == 64 and config.chat_template is False
        asked = {c.messages[0]["content"][len("Question: What is "):].split("'s ")[0] for c in examples + held_out}
        assert asked == train_names  # never a held-out or novel-values person
    assert [c.messages for c in load_examples(configs["c2c"])[0]] == \
        [c.messages for c in load_examples(configs["lora"])[0]]  # the LoRA baseline trains on the same questions


def test_build_train_and_eval_every_method_on_tiny_models(tmp_path, monkeypatch, base_folder, isolated_cache):
    from c2c.cli import main
    monkeypatch.chdir(tmp_path)
    gemma = tmp_path / "gemma"
    tiny("gemma").model.save_pretrained(gemma)
    tiny("gemma").tokenizer.save_pretrained(gemma)
    sharer = script("knowledge_sharer")
    sharer.main(build_args(gemma, Path("runs/knowledge_handoff"))[:-2])  # the recipes' paths, under the tmp cwd
    small = ["--set", f"receiver={base_folder}", "--steps", "2", "--batch-size", "2", "--max-examples", "6",
             "--set", "eval_examples=2", "--set", "fuser.hidden_size=8", "--set", "fuser.intermediate_size=8"]
    main(["train", str(RECIPES / "position_free.yaml"), *small])
    main(["train", str(RECIPES / "lora.yaml"), *small, "--set", "sharers=[runs/knowledge_handoff/sharer]"])
    book = "runs/knowledge_handoff/encyclopedia"
    main(["eval", "--fuser", "runs/knowledge_handoff/c2c_position_free", "--lora", "runs/knowledge_handoff/lora",
          "--bench", f"{book}/held_out.jsonl,{book}/novel_values.jsonl", "--scoring", "cloze", "--limit", "4",
          "--methods", "receiver,sharer,c2c,c2c-shuffled,lora-receiver,t2t,routing-oracle", "--t2t-tokens", "2",
          "--out", "results/eval"])
    summary = json.loads(Path("results/eval/summary.json").read_text())
    assert set(summary["benchmarks"]) == {"held_out", "novel_values"}
    assert set(summary["benchmarks"]["held_out"]["methods"]) == {"receiver", "sharer", "c2c", "c2c-shuffled",
                                                                 "lora-receiver", "t2t", "routing-oracle"}
    # the table: every method per test set, the paired gain, the gap closed, the targets, a scaling row
    import shutil
    from c2c.core.runlog import read_jsonl
    from c2c.core.stats import gap_closed
    root = Path("results/knowledge_handoff")
    root.mkdir(parents=True)
    shutil.copytree("results/eval", root / "eval")
    shutil.copytree("results/eval", root / "scale" / "n250")
    main(["eval", "--fuser", "runs/knowledge_handoff/c2c_position_free", "--bench", f"{book}/held_out.jsonl",
          "--scoring", "cloze", "--limit", "4", "--methods", "c2c,c2c-shuffled", "--out", "results/variant"])
    shutil.copytree("results/variant", root / "position_free")
    shutil.copytree("results/variant", root / "ahead")
    shutil.copytree("results/eval", root / "self")  # a variant with a sharer of its own, which knows everything
    own = root / "self" / "held_out" / "sharer.jsonl"
    own.write_text("".join(json.dumps({**r, "correct": True}) + "\n" for r in read_jsonl(own)))
    script("knowledge_handoff_table").main(root)
    result = json.loads((root / "knowledge.json").read_text())
    held_out = result["tests"]["held_out"]
    correct = {m: {r["id"]: float(r["correct"]) for r in read_jsonl(root / "eval" / "held_out" / f"{m}.jsonl")}
               for m in ("c2c", "c2c-shuffled", "receiver")}
    assert held_out["n"] == 4 and held_out["gain"]["difference"] == pytest.approx(
        sum(correct["c2c"][i] - correct["c2c-shuffled"][i] for i in correct["c2c"]) / 4)
    assert set(held_out["accuracy"]) == {"receiver", "sharer", "c2c", "c2c-shuffled", "lora-receiver", "t2t",
                                         "routing-oracle"}
    assert len(result["targets"]) == 3 and all(isinstance(v, bool) for v in result["targets"].values())
    assert set(result["scale"]) == {"full", "n250"} and result["scale"]["n250"]["questions"] == 250
    assert result["scale"]["n250"]["held_out"]["gain"] == held_out["gain"]  # the same records, the same gain
    assert set(result["position_free"]) == {"held_out"}  # the test sets its run scored
    assert result["position_free"]["held_out"]["gain"] == held_out["gain"]
    assert result["ahead"]["held_out"]["gain"] == held_out["gain"]
    assert result["ahead"]["held_out"]["sharer"] == held_out["accuracy"]["sharer"]  # the main evaluation's sharer
    assert result["self"]["held_out"]["sharer"] == 1.0  # its own
    predicted = {m: {r["id"]: r["prediction"] for r in read_jsonl(root / "eval" / "held_out" / f"{m}.jsonl")}
                 for m in ("c2c", "c2c-shuffled", "receiver")}
    assert held_out["c2c picks as"]["c2c-shuffled"] == pytest.approx(
        sum(predicted["c2c"][i] == predicted["c2c-shuffled"][i] for i in predicted["c2c"]) / 4)
    assert held_out["c2c picks as"]["receiver"] == pytest.approx(
        sum(predicted["c2c"][i] == predicted["receiver"][i] for i in predicted["c2c"]) / 4)
    assert held_out["c2c - receiver"]["difference"] == pytest.approx(
        sum(correct["c2c"][i] - correct["receiver"][i] for i in correct["c2c"]) / 4)
    assert result["self"]["held_out"]["gap_closed"] == gap_closed(correct["receiver"], {i: 1.0 for i in correct["c2c"]},
                                                                  correct["c2c"])
    assert (root / "table.md").read_text().startswith("# Knowledge handoff") and (root / "scale.png").is_file()
