"""c2c inside lm-evaluation-harness (c2c/lm_eval_harness.py), offline, on tiny pairs.

lm-eval's multiple-choice ``acc_norm`` ranks choices by log-likelihood per character of the choice string; c2c's
cloze scoring ranks by log-likelihood per character of the continuation " " + choice. With the task layout
``write_task(layout="c2c")`` (the space inside the choices, target_delimiter "") the two divide by the same
characters, so lm-eval's ``acc_norm`` is ``c2c eval --scoring cloze``'s accuracy, item by item; lm-eval's usual
layout (target_delimiter " ") scores the same continuations but divides by the choice without its space.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed: pip install 'c2c[lm-eval]'")

from conftest import make_pair  # noqa: E402
from tiny import tiny  # noqa: E402

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from c2c.data import MCItem, cloze_continuations, mc_prompt  # noqa: E402
from c2c.evaluation.evaluate import EvalConfig, EvalSetup, run_eval  # noqa: E402
from c2c.lm_eval_harness import C2CLM, write_task  # noqa: E402
from c2c.core.models import load_model  # noqa: E402
from c2c.model.pair import C2CModel  # noqa: E402
from c2c.runtime.passes import continuation_logprobs, token_continuations  # noqa: E402

QUESTIONS = [
    ("What is the capital of France?", ["Paris", "a lazy dog", "Ice", "the sun once a year"], 0),
    ("Which planet is closest to the sun?", ["Mercury", "The earth", "birds and cats"], 0),
    ("At what temperature does water boil?", ["zero degrees", "100 degrees Celsius", "a year"], 1),
    ("Which of these are animals?", ["code with symbols", "Cats, dogs and birds", "Water", "Paris"], 1),
    ("What does the quick brown fox do?", ["melts", "jumps over the lazy dog", "boils"], 1),
    ("When does ice melt?", ["at zero degrees", "once a year", "never", "at 100"], 0),
]
ITEMS = [MCItem(f"q{i}", q, choices, answer) for i, (q, choices, answer) in enumerate(QUESTIONS)]


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def direct_logprob(model, ids: list[int], start: int) -> tuple[float, bool]:
    """Sum of log p(ids[t] | ids[:t]) for t >= start, and whether each is the argmax: one plain forward pass."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, -1)[start - 1:]
    target = torch.tensor(ids[start:])
    return float(logprobs.gather(-1, target[:, None]).sum()), bool((logprobs.argmax(-1) == target).all())


def lm_eval_run(lm: C2CLM, folder: Path, tasks: list[str]) -> dict:
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, log_samples=True, bootstrap_iters=0,
                                   task_manager=TaskManager(include_path=str(folder), include_defaults=False))


@pytest.mark.parametrize("fuse", [True, False])
def test_acc_norm_is_c2c_cloze_accuracy(tmp_path, offline, fuse):
    pair = make_pair()
    for layout in ("c2c", "lm-eval"):
        write_task(ITEMS, tmp_path / "tasks", f"tiny_{layout.replace('-', '_')}", layout, cache_dir=tmp_path / "hf")
    items_file = tmp_path / "items.jsonl"
    items_file.write_text("".join(json.dumps({"id": i.id, "question": i.question, "choices": i.choices,
                                              "answer": i.answer}) + "\n" for i in ITEMS))
    method = "c2c" if fuse else "receiver"
    summary = run_eval(EvalConfig([str(items_file)], [method], scoring="cloze", out=str(tmp_path / "eval"), warmup=0),
                       EvalSetup(pair))
    (name,) = summary["benchmarks"]
    records = [json.loads(line) for line in (tmp_path / "eval" / name / f"{method}.jsonl").open()]
    results = lm_eval_run(C2CLM(pair=pair, fuse=fuse), tmp_path / "tasks", ["tiny_c2c", "tiny_lm_eval"])

    c2c_acc = sum(r["correct"] for r in records) / len(records)
    assert summary["benchmarks"][name]["methods"][method]["accuracy"] == pytest.approx(c2c_acc, abs=1e-4)
    assert results["results"]["tiny_c2c"]["acc_norm,none"] == pytest.approx(c2c_acc)
    for layout in ("tiny_c2c", "tiny_lm_eval"):
        samples = sorted(results["samples"][layout], key=lambda s: s["doc_id"])
        assert len(samples) == len(records) == len(ITEMS)
        for sample, record, item in zip(samples, records, ITEMS):
            lls = [ll for ll, _ in sample["filtered_resps"]]
            texts = cloze_continuations(item)
            # the same log-likelihoods, bit for bit: divided by its characters, each is c2c's cloze score
            assert [ll / len(text) for ll, text in zip(lls, texts)] == record["scores"]
            assert sample["acc"] == float(max(range(len(lls)), key=lls.__getitem__) == item.answer)
            divisor = texts if layout == "tiny_c2c" else item.choices
            pick = max(range(len(lls)), key=lambda k: lls[k] / len(divisor[k]))
            assert sample["acc_norm"] == float(pick == item.answer)
            if layout == "tiny_c2c":
                assert pick == record["prediction"]  # acc_norm's pick is c2c eval's cloze pick


def test_fusion_changes_the_scores_and_one_prefill_serves_each_context(monkeypatch):
    pair = make_pair()
    requests = [Instance("loglikelihood", {}, (mc_prompt(item, "cloze"), text), 0)
                for item in ITEMS[:3] for text in cloze_continuations(item)]
    prefills = []
    prefill = pair.prefill
    monkeypatch.setattr(pair, "prefill", lambda batch, fuse=True: prefills.append(batch.input_ids.shape[0]) or
                        prefill(batch, fuse=fuse))
    fused = C2CLM(pair=pair, batch_size=2).loglikelihood(requests + requests[::-1])  # each asked twice
    assert prefills == [2, 1]  # three contexts, batch_size 2: two prefills, not one per choice
    assert fused[len(requests):] == fused[:len(requests)][::-1]  # a request asked twice: scored once
    fused = fused[:len(requests)]
    alone = C2CLM(pair=pair, fuse=False).loglikelihood(requests)
    assert len(fused) == len(alone) == len(requests)
    assert all(isinstance(ll, float) and isinstance(greedy, bool) for ll, greedy in fused + alone)
    assert all(a != b for (a, _), (b, _) in zip(fused, alone))  # open gates: fusion moves every score
    # batched prompts (left-padded) give the scores of prompts prefilled one by one
    one_by_one = C2CLM(pair=pair, batch_size=1).loglikelihood(requests)
    assert [ll for ll, _ in fused] == pytest.approx([ll for ll, _ in one_by_one], abs=1e-4)


def test_loglikelihood_of_the_receiver_is_a_direct_computation():
    pair = make_pair()
    lm = C2CLM(pair=pair, fuse=False)
    receiver, tokenizer = pair.receiver.model, pair.receiver.tokenizer
    # the receiver's own greedy tokens after a prompt: a continuation lm-eval must report as greedy (taken
    # where the decoded text tokenizes back to the same tokens)
    for item in ITEMS:
        prompt = mc_prompt(item, "cloze")
        prompt_ids = pair.prepare([prompt]).input_ids[0].tolist()
        greedy_ids = list(prompt_ids)
        for _ in range(2):
            with torch.no_grad():
                greedy_ids.append(int(receiver(input_ids=torch.tensor([greedy_ids])).logits[0, -1].argmax()))
        greedy_text = tokenizer.decode(greedy_ids[len(prompt_ids):])
        if tokenizer(greedy_text, add_special_tokens=False)["input_ids"] == greedy_ids[len(prompt_ids):]:
            break
    else:
        pytest.fail("no greedy continuation of the tiny receiver tokenizes back to its tokens")
    continuations = [" Paris", " dogs", greedy_text]
    # trailing spaces of the context move to the continuation, as lm-eval's own models do
    requests = [Instance("loglikelihood", {}, (prompt, continuations[0]), 0),
                Instance("loglikelihood", {}, (prompt + " ", continuations[1][1:]), 0),
                Instance("loglikelihood", {}, (prompt, continuations[2]), 0)]
    results = lm.loglikelihood(requests)
    for (ll, greedy), text in zip(results, continuations):
        # continuation tokenized on its own, after the prompt's tokens (as c2c's cloze scores)
        expected, expected_greedy = direct_logprob(receiver, prompt_ids + tokenizer(text, add_special_tokens=False)
                                                   ["input_ids"], len(prompt_ids))
        assert ll == pytest.approx(expected, abs=1e-4) and greedy == expected_greedy
    assert results[2][1] is True and results[0][1] is False
    # an empty context: the continuation after the prefix token, by the receiver
    (ll, _), = lm.loglikelihood([Instance("loglikelihood", {}, ("", " Paris"), 0)])
    prefix = tokenizer.bos_token_id
    assert ll == pytest.approx(direct_logprob(receiver, [prefix] + tokenizer(" Paris", add_special_tokens=False)
                                              ["input_ids"], 1)[0], abs=1e-4)


def test_token_continuations_are_continuation_logprobs_with_greedy_flags():
    pair = make_pair()
    batch = pair.prepare([mc_prompt(item, "cloze") for item in ITEMS[:3]])
    choices = [cloze_continuations(item) for item in ITEMS[:3]]
    with torch.no_grad():
        cache = pair.prefill(batch)
        sums, counts = continuation_logprobs(pair.receiver.model, pair.receiver.tokenizer, batch.input_ids,
                                             batch.attention_mask, cache, choices)
        rows = [pair.receiver.tokenizer(t, add_special_tokens=False)["input_ids"] for c in choices for t in c]
        ours, our_counts, greedy = token_continuations(pair.receiver.model, pair.receiver.tokenizer, batch.input_ids,
                                                       batch.attention_mask, cache, rows, [len(c) for c in choices])
    assert torch.equal(sums, ours) and torch.equal(counts, our_counts)
    assert greedy.dtype == torch.bool and greedy.shape == sums.shape


def test_loglikelihood_rolling_is_the_receivers_perplexity_in_windows():
    pair = make_pair()
    receiver, tokenizer = pair.receiver.model, pair.receiver.tokenizer
    texts = ["The quick brown fox jumps over the lazy dog.", "Water boils at 100 degrees Celsius."]
    requests = [Instance("loglikelihood_rolling", {}, (text,), 0) for text in texts]
    whole = C2CLM(pair=pair).loglikelihood_rolling(requests)  # fuse=True too: rolling is the receiver alone
    prefix = tokenizer.bos_token_id
    for total, text in zip(whole, texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert total == pytest.approx(direct_logprob(receiver, [prefix] + ids, 1)[0], abs=1e-4)
    windowed = C2CLM(pair=pair, max_length=4).loglikelihood_rolling(requests[:1])
    ids = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    expected = 0.0
    for context, predicted in map(lm_eval.utils.make_disjoint_window,
                                  lm_eval.utils.get_rolling_token_windows(ids, prefix, 4, 1)):
        expected += direct_logprob(receiver, context + predicted, len(context))[0]
    assert len(ids) > 8 and windowed[0] == pytest.approx(expected, abs=1e-4)
    assert abs(windowed[0] - whole[0]) > 1e-3  # several windows, each with less context than the whole text


def test_generate_until_is_pair_generate_cut_at_the_stop():
    pair = make_pair()
    prompts = ["Question: What is the capital of France?\nAnswer:", "Why is the sky blue?"]
    free = pair.generate(prompts, max_new_tokens=8)
    stop = free[0][2:4]
    lm = C2CLM(pair=pair, batch_size=2)
    requests = [Instance("generate_until", {}, (p, {"until": [stop], "max_gen_toks": 8}), 0) for p in prompts]
    requests.append(Instance("generate_until", {}, (prompts[1], {"max_gen_toks": 3, "do_sample": False}), 0))
    out = lm.generate_until(requests)
    assert len(out) == 3 and all(isinstance(text, str) for text in out)
    stopped = pair.generate(prompts, max_new_tokens=8, stop=[stop])
    assert out[:2] == [text.split(stop)[0] for text in stopped] and out[0] == free[0].split(stop)[0]
    assert out[2] == pair.generate(prompts[1], max_new_tokens=3)[0]
    assert C2CLM(pair=pair, fuse=False).generate_until(requests[2:]) == pair.generate(prompts[1], max_new_tokens=3,
                                                                                      fuse=False)


@pytest.fixture
def fuser_folder(tmp_path, isolated_cache):
    """A tiny pair saved as lm-eval loads it: model folders named in the fuser's config."""
    for kind in ("llama", "gemma"):
        tiny(kind).model.save_pretrained(tmp_path / kind)
        tiny(kind).tokenizer.save_pretrained(tmp_path / kind)
    pair = C2CModel.create(load_model(str(tmp_path / "llama")), [load_model(str(tmp_path / "gemma"))])
    return pair.save_pretrained(tmp_path / "fuser")


def test_model_args_build_the_pair(fuser_folder):
    model = lm_eval.api.registry.get_model("c2c")
    assert model is C2CLM and "hf" in lm_eval.api.registry.MODEL_REGISTRY  # the built-in models stay registered
    # lm-eval's own defaults (its CLI's device is cuda:0) lose to --model_args, and cuda means auto without CUDA
    lm = model.create_from_arg_string(f"fuser={fuser_folder},fuse=False,batch_size=3",
                                      {"batch_size": 1, "max_batch_size": None, "device": "cuda:0"})
    assert lm.fuse is False and lm.batch_size == 3 and lm.pair.device.type == ("cuda" if torch.cuda.is_available()
                                                                              else "cpu")
    assert C2CLM.create_from_arg_obj({"fuser": str(fuser_folder)}, {"batch_size": "auto"}).batch_size == 8
    with pytest.raises(ValueError, match="fuser=DIR_OR_HUB_ID"):
        C2CLM()


@pytest.mark.slow
def test_the_command_line(tmp_path, fuser_folder, offline):
    write_task(ITEMS[:2], tmp_path / "tasks", "tiny_cli", cache_dir=tmp_path / "hf")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "c2c.lm_eval_harness", "--model", "c2c", "--model_args",
                           f"fuser={fuser_folder},fuse=False", "--tasks", "tiny_cli", "--include_path",
                           str(tmp_path / "tasks"), "--device", "cpu", "--output_path", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tiny_cli" in done.stdout and "acc_norm" in done.stdout
    assert list((tmp_path / "out").rglob("results_*.json"))
