"""Phase 2 of a context translator on tiny models: self-distillation through the receiver (``c2c train`` with
method translator and steps), its batches, loss, resumption and recipe checks."""

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny

from c2c.data import Conversation
from c2c.training.objectives import distillation_batch, distillation_sum, reconstruction_error
from c2c.model.pair import C2CModel
from c2c.training.recipe import RecipeError
from c2c.core.runlog import read_metrics
from c2c.training.train import TrainConfig, train, translator_model
from c2c.translator.config import TranslatorConfig

DISTILL_DATA = [{"benchmark": "synthetic-1fact", "split": "train", "prompt_style": "cloze", "target": "text",
                 "limit": 24}]


def recipe(output, **overrides) -> TrainConfig:
    settings = dict(output=str(output), method="translator", chat_template=False, data=[{"synthetic": 60, "facts": 1}],
                    eval_examples=4, translator={"window": 0}, distill_data=DISTILL_DATA, steps=4, batch_size=4,
                    lr=1e-3, warmup=0.0, save_every=2, eval_every=4, log_every=1, seed=3)
    return TrainConfig(**{**settings, **overrides})


def tiny_pair(seed: int = 0) -> C2CModel:
    torch.manual_seed(seed)
    pair = C2CModel.create(tiny("llama"), [tiny("gemma")], translator=TranslatorConfig(window=0), chat_template=False)
    with torch.no_grad():
        for linear in pair.translators[0].maps:
            linear.weight.normal_(0, 0.05)
    return pair


def conversations(*pairs) -> list[Conversation]:
    return [Conversation([{"role": "user", "content": f"Question: What is {name}'s pet?\nAnswer:"},
                          {"role": "assistant", "content": answer}], f"row{i}", context=context)
            for i, (name, answer, context) in enumerate(pairs)]


ROWS = conversations(("Mira", "Mira's pet is a dog.", "Mira's pet is a dog."),
                     ("Oskar", "cat", "Oskar's pet is a cat. Talia's job is nurse. Bruno's city is Oslo."))


def test_teacher_and_student_hold_the_same_tokens_after_the_context():
    pair = tiny_pair()
    micro = distillation_batch(pair, ROWS, torch.device("cpu"))
    width = micro.distilled.shape[1] + 1
    student, teacher = micro.batch, micro.teacher
    assert teacher.input_ids.shape[1] > student.input_ids.shape[1] - width  # the teacher also reads the text
    for row in range(2):
        real = student.attention_mask[row, -width:].bool()
        assert torch.equal(student.input_ids[row, -width:][real], teacher.input_ids[row, -width:][real])
        # every prediction whose input and target are real tokens: (question + response tokens) - 1
        question = len(pair.receiver.tokenizer("\nQuestion: What is Mira's pet?\nAnswer:")["input_ids"])
        assert int(micro.distilled[row].sum()) == int(real.sum()) - 1 >= question
    assert micro.units == int(micro.distilled.sum())


def test_the_distillation_loss_is_the_kl_of_the_two_readings_and_zero_for_a_perfect_translation():
    pair = tiny_pair()
    micro = distillation_batch(pair, ROWS[:1], torch.device("cpu"))
    width = micro.distilled.shape[1] + 1
    with torch.no_grad():
        teacher = torch.log_softmax(pair.logits_from(micro.teacher, micro.teacher.input_ids.shape[1] - width,
                                                     fuse=False), -1)[0]
        student = torch.log_softmax(pair.logits_from(micro.batch, micro.batch.input_ids.shape[1] - width), -1)[0]
        expected = sum(float(torch.nn.functional.kl_div(student[t], teacher[t], log_target=True, reduction="sum"))
                       for t in range(width - 1))
        assert float(distillation_sum(pair, micro)) == pytest.approx(expected, rel=1e-5) and expected > 0
    # The Identical pair with its own K/V translated exactly: the student reads what the teacher read.
    torch.manual_seed(0)
    receiver = tiny("llama")
    same = C2CModel.create(receiver, [receiver], translator=TranslatorConfig(window=0), chat_template=False)
    with torch.no_grad():
        for linear in same.translators[0].maps:
            linear.weight.copy_(torch.eye(linear.weight.shape[0]))
    micro = distillation_batch(same, ROWS[:1], torch.device("cpu"))
    with torch.no_grad():
        assert float(distillation_sum(same, micro)) == pytest.approx(0.0, abs=1e-4)
        assert float(reconstruction_error(same, [ROWS[0].context])) == pytest.approx(0.0, abs=1e-8)


def test_the_reconstruction_term_adds_its_weighted_error_per_unit():
    pair = tiny_pair()
    micro = distillation_batch(pair, ROWS, torch.device("cpu"))
    with torch.no_grad():
        plain, error = float(distillation_sum(pair, micro)), float(reconstruction_error(pair, micro.contexts))
        assert float(distillation_sum(pair, micro, 0.5)) == pytest.approx(plain + 0.5 * micro.units * error, rel=1e-5)
    assert error > 0


def test_phase_two_trains_the_fitted_maps_and_resumes_exactly(tmp_path):
    models = dict(receiver=tiny("llama"), sharers=[tiny("gemma")])
    whole = train(recipe(tmp_path / "whole", steps=6, teacher_tokens=3, reconstruction_weight=0.1), **models)
    fitted = load_file(str(whole / "closed_form" / "fuser.safetensors"))
    trained = load_file(str(whole / "fuser.safetensors"))
    assert set(fitted) == set(trained) and any(not torch.equal(fitted[k], trained[k]) for k in fitted if ".maps." in k)
    assert all(torch.equal(fitted[k], trained[k]) for k in fitted if ".maps." not in k)  # statistics stay fitted
    metrics = read_metrics(whole)
    assert [r["step"] for r in metrics if "loss" in r] == [1, 2, 3, 4, 5, 6]
    teacher = [json.loads(line) for line in (whole / "teacher.jsonl").read_text().splitlines()]
    assert len(teacher) == 20 and all(r["source"].endswith("#text") for r in teacher)  # 24 less 4 held out

    interrupted = recipe(tmp_path / "cut", steps=6, teacher_tokens=3, reconstruction_weight=0.1)
    train(interrupted, stop_after=3, **models)  # checkpoint at step 2; step 3 is redone
    (tmp_path / "cut" / "teacher.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in teacher[:5]) + '{"source": "cut off')  # a partial generation
    train(interrupted, resume=True, **models)
    resumed = load_file(str(tmp_path / "cut" / "fuser.safetensors"))
    assert all(torch.equal(trained[k], resumed[k]) for k in trained)
    loaded = C2CModel.from_pretrained(whole, **models)
    assert loaded.config.translator.window == 0 and loaded.config.fuser is None


def test_a_missing_init_from_is_refused_before_any_model_loads(tmp_path, monkeypatch):
    import c2c.training.train as training
    from c2c.model.config import CheckpointError
    monkeypatch.setattr(training, "load_model", lambda *a, **k: pytest.fail("a model loaded"))
    with pytest.raises(CheckpointError, match="nowhere is not a c2c checkpoint"):
        train(recipe(tmp_path / "x", init_from=str(tmp_path / "nowhere"), data=[], steps=2))


def test_phase_two_can_start_from_a_translator_checkpoint(tmp_path):
    models = dict(receiver=tiny("llama"), sharers=[tiny("gemma")])
    first = train(recipe(tmp_path / "fit", steps=None, distill_data=[]), **models)
    second = train(recipe(tmp_path / "distilled", init_from=str(first), data=[], steps=2), **models)
    assert not (second / "closed_form").exists() and (second / "fuser.safetensors").is_file()
    with pytest.raises(RecipeError, match="no context translator"):
        fuser_only = C2CModel.create(tiny("llama"), [tiny("gemma")])
        fuser_only.save_pretrained(tmp_path / "fuser_only")
        train(recipe(tmp_path / "bad", init_from=str(tmp_path / "fuser_only"), data=[]), **models)


def test_phase_two_keeps_the_source_layers_of_the_checkpoint_it_starts_from(tmp_path):
    """A checkpoint from before the global-layer rule (no translator_sources: the window around the partner) is
    trained further on the sharer layers its maps were fitted on, not on those the rule picks today."""
    receiver, sharer = tiny("llama"), tiny("gemma")
    tiny_pair().save_pretrained(tmp_path / "old")
    saved = json.loads((tmp_path / "old" / "c2c_config.json").read_text())
    saved["sharers"][0]["translator_sources"] = None
    (tmp_path / "old" / "c2c_config.json").write_text(json.dumps(saved))
    old = C2CModel.from_pretrained(tmp_path / "old", receiver, [sharer])
    assert old.translators[0].sources != tiny_pair().translators[0].sources  # the rule of today reads other layers
    pair, _ = translator_model(recipe(tmp_path / "x", init_from=str(tmp_path / "old"), data=[]), receiver, [sharer],
                               tmp_path / "old")
    assert pair.translators[0].sources == old.translators[0].sources
    with torch.no_grad():
        losses = [float(distillation_sum(p, distillation_batch(p, ROWS, torch.device("cpu")))) for p in (old, pair)]
    assert losses[0] == losses[1] > 0


@pytest.mark.parametrize("overrides, message", [
    ({"distill_data": []}, "needs distill_data"),
    ({"steps": None, "teacher_tokens": 8}, "teacher_tokens configure"),
    ({"steps": None, "init_from": "fusers/x"}, "init_from configure"),
    ({"steps": 2, "epochs": 1.0}, "at most one of steps or epochs"),
    ({"teacher_tokens": -1}, "teacher_tokens must be >= 0"),
    ({"reconstruction_weight": -0.5}, "reconstruction_weight must be >= 0"),
])
def test_phase_two_recipe_errors(tmp_path, overrides, message):
    with pytest.raises(RecipeError, match=message):
        recipe(tmp_path / "x", **overrides)


def test_an_example_without_context_is_refused():
    rows = conversations(("Mira", "dog", "Mira's pet is a dog."))
    rows[0].context = None
    with pytest.raises(ValueError, match="needs a context in every example"):
        distillation_batch(tiny_pair(), rows, torch.device("cpu"))


def test_a_low_rank_residual_starts_at_zero_and_trains_in_phase_two(tmp_path):
    models = dict(receiver=tiny("llama"), sharers=[tiny("gemma")])
    first = train(recipe(tmp_path / "fit", steps=None, distill_data=[]), **models)
    fitted = C2CModel.from_pretrained(first, **models)
    run = train(recipe(tmp_path / "residual", init_from=str(first), data=[], steps=2,
                       translator={"window": 0, "residual_rank": 4}), **models)
    trained = C2CModel.from_pretrained(run, **models)
    residual = trained.translators[0].residuals[0]
    assert trained.config.translator.residual_rank == 4 and residual.down.weight.shape == (4, 2 * 16)
    assert residual.up.weight.abs().sum() > 0  # trained from its zero start
    fresh = C2CModel.create(tiny("llama"), [tiny("gemma")], translator=TranslatorConfig(window=0, residual_rank=4),
                            chat_template=False)
    fresh.translators.load_state_dict(fitted.translators.state_dict(), strict=False)
    kv = [(torch.randn(1, 1, 3, 16), torch.randn(1, 1, 3, 16)) for _ in range(3)]
    assert all(torch.equal(a, b) for x, y in zip(fresh.translators[0](kv), fitted.translators[0](kv))
               for a, b in zip(x, y))  # the zero-started residual changes nothing
    with pytest.raises(RecipeError, match="window"):
        train(recipe(tmp_path / "bad", init_from=str(first), data=[], translator={"window": 1}), **models)


def test_free_text_items_train_on_their_first_reference():
    from c2c.data import DataError, MCItem
    from c2c.data.training import mc_conversations
    item = MCItem("q1", "When?", [], -1, context="It was 1905.", references=["1905", "in 1905"])
    (conversation,) = mc_conversations([item], "cloze", "text")
    assert conversation.messages[-1]["content"] == "1905" and conversation.context == "It was 1905."
    with pytest.raises(DataError, match="free text"):
        mc_conversations([item], "cloze", "choices")


def test_teacher_continuations_are_made_once_per_prompt_and_context(tmp_path, monkeypatch):
    from c2c.training.train import teacher_continuations
    calls = []
    monkeypatch.setattr(C2CModel, "generate", lambda self, prompts, **kw: calls.append(len(prompts)) or
                        [f" answer {len(calls)}.{i}" for i in range(len(prompts))])
    item = ROWS[0]
    free = Conversation([{"role": "user", "content": "Answer briefly.\n" + item.messages[0]["content"]},
                         item.messages[1]], item.source, context=item.context)  # the same item, another prompt
    rows = [item, free, item]
    out = teacher_continuations(tiny_pair(), rows, 4, tmp_path / "teacher.jsonl")
    assert calls == [2] and [c.messages[-1]["content"] for c in out] == [" answer 1.0", " answer 1.1", " answer 1.0"]
    again = teacher_continuations(tiny_pair(), rows, 4, tmp_path / "teacher.jsonl")  # a resume reads them back
    assert calls == [2] and [c.messages for c in again] == [c.messages for c in out]


def test_a_run_stopped_before_its_first_checkpoint_resumes_with_its_fit_and_teacher(tmp_path, monkeypatch):
    """The folder is a run from its start: stopped while making teacher continuations, it resumes from them."""
    import c2c.training.train as training
    models = dict(receiver=tiny("llama"), sharers=[tiny("gemma")])
    config = recipe(tmp_path / "run", teacher_tokens=2)
    original = training.teacher_continuations

    def stop(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(training, "teacher_continuations", stop)
    with pytest.raises(KeyboardInterrupt):
        train(config, **models)
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["teacher_tokens"] == 2
    assert (tmp_path / "run" / "closed_form" / "fuser.safetensors").is_file()
    monkeypatch.setattr(training, "teacher_continuations", original)
    with pytest.raises(RecipeError, match="--resume"):
        train(config, **models)
    fitted = (tmp_path / "run" / "closed_form" / "fuser.safetensors").stat().st_mtime_ns
    train(config, resume=True, **models)
    assert (tmp_path / "run" / "closed_form" / "fuser.safetensors").stat().st_mtime_ns == fitted  # not refitted
    assert (tmp_path / "run" / "fuser.safetensors").is_file()


def test_logits_from_a_column_inside_a_translated_section_are_refused():
    pair = tiny_pair()
    micro = distillation_batch(pair, ROWS[:1], torch.device("cpu"))
    section = next(s for s in micro.batch.sections if s is not None)
    with pytest.raises(ValueError, match="inside a translated section"):
        pair.logits_from(micro.batch, section.start + 1)
