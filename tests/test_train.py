"""Training on tiny models: learning, resumption (in process and after kill -9), torchrun, bad recipes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from conftest import SMALL_FUSER, real_data
from tiny import tiny

from c2c.training import train as training
from c2c.data import BENCHMARKS
from c2c.training.fit_translators import fitting_texts
from c2c.core.models import BUILTIN_MODELS
from c2c.model.pair import C2CModel
from c2c.training.distributed import Runtime
from c2c.training.objectives import prepare, split
from c2c.training.recipe import RecipeError, TrainConfig
from c2c.core.runlog import read_metrics, training_minutes
from c2c.training.train import TrainingError, train

pytestmark = pytest.mark.usefixtures("isolated_cache")  # conversions go to a temporary cache

TESTS = Path(__file__).parent
ROOT = TESTS.parent
QA = [("What is the capital of France?", "Paris."), ("Water boils at what temperature?", "100 degrees Celsius."),
      ("Which planet is closest to the sun?", "Mercury."), ("Name an animal.", "The dog."),
      ("What melts at zero degrees?", "Ice."), ("Which animal jumps over the lazy dog?", "The quick brown fox.")]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n" for q, a in QA))
    return str(path)


def config(tmp_path, data, **overrides) -> TrainConfig:
    values = dict(output=str(tmp_path / "run"), data=[data], steps=8, batch_size=2, eval_examples=0, lr=1e-2,
                  gate_lr=5e-2, log_every=1, save_every=3, seed=3,
                  fuser={"hidden_size": 16, "intermediate_size": 16, "dropout": 0.1})
    return TrainConfig(**{**values, **overrides})


def run(cfg: TrainConfig, **kwargs):
    return train(cfg, receiver=tiny("llama"), sharers=[tiny("gemma")], **kwargs)


def metrics(folder) -> list[dict]:
    return [json.loads(line) for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]


def weights(folder) -> dict:
    return load_file(str(Path(folder) / "checkpoint" / "trainable.safetensors"))


@pytest.mark.slow
def test_overfitting_a_few_examples_lowers_the_loss_and_moves_the_gates(tmp_path, data):
    cfg = config(tmp_path, data, steps=60, save_every=60, eval_examples=2)
    output = run(cfg)
    losses = [m["loss"] for m in metrics(output) if "loss" in m]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    gates = torch.tensor([m["gate_logits"] for m in metrics(output) if "gate_logits" in m][-1])
    assert gates.abs().max() > 0.1  # the gates really learn (at lr 1e-4 they stayed within 0.02 of 0)
    assert any("eval_loss" in m for m in metrics(output))
    pair = C2CModel.from_pretrained(output, receiver=tiny("llama"), sharers=[tiny("gemma")])
    torch.testing.assert_close(pair.gate_logits()[0], gates, rtol=0, atol=1e-4)  # the saved fuser is the trained one


def test_lora_baseline_trains_on_the_same_data(tmp_path, data):
    output = run(config(tmp_path, data, method="lora", steps=30, save_every=30, lr=3e-3))
    losses = [m["loss"] for m in metrics(output) if "loss" in m]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5
    assert (output / "lora" / "adapter_model.safetensors").is_file()
    assert all(p.grad is None or not p.requires_grad for p in tiny("gemma").model.parameters())


@pytest.fixture
def mc_data(tmp_path):
    path = tmp_path / "mc.jsonl"
    rows = [("What is the capital of France?", ["Paris", "London", "Berlin"], 0),
            ("Water boils at what temperature?", ["zero degrees", "one hundred degrees", "ten degrees"], 1),
            ("Which planet is closest to the sun?", ["Venus", "Earth", "Mercury", "Mars"], 2),
            ("Which of these is an animal?", ["a rock", "a chair", "a dog"], 2)]
    path.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in rows))
    return {"benchmark": str(path), "split": "test", "prompt_style": "cloze", "target": "choices"}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["c2c", "lora"])
def test_choice_objective_learns_to_rank_the_right_choice(tmp_path, mc_data, method):
    cfg = config(tmp_path, mc_data, method=method, objective="choices", steps=50, save_every=50, batch_size=4,
                 eval_examples=0, lr=1e-2 if method == "c2c" else 3e-3)
    losses = [m["loss"] for m in metrics(run(cfg)) if "loss" in m]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_distillation_targets_mix_the_answer_with_the_sharers_own_ranking(tmp_path, mc_data):
    cfg = config(tmp_path, mc_data, objective="choices", distill_weight=0.25, distill_temperature=0.5)
    examples, _ = training.load_examples(config(tmp_path, mc_data, eval_examples=0))
    pair, _ = training.build_model(cfg, tiny("llama"), [tiny("gemma")])
    micro = prepare(pair, examples, torch.device("cpu"), cfg)
    prompts = [split(c)[0] for c in examples]
    sharer = pair.sharer_choice_scores(pair.prepare(prompts), [c.choices for c in examples])
    for target, scores, example in zip(micro.targets, sharer, examples):
        expected = 0.25 * torch.softmax(scores / 0.5, -1)
        expected[example.answer] += 0.75
        torch.testing.assert_close(target, expected)
    assert micro.sharer_picks == [int(s.argmax()) for s in sharer]
    # the shuffled control changes what the sharer's cache holds, never the target
    shuffled = prepare(pair, examples, torch.device("cpu"), cfg, prompts[1:] + prompts[:1])
    assert not torch.equal(shuffled.batch.sharer_ids[0], micro.batch.sharer_ids[0])
    for a, b in zip(shuffled.targets, micro.targets):
        torch.testing.assert_close(a, b)
    plain = prepare(pair, examples, torch.device("cpu"), config(tmp_path, mc_data, objective="choices"))
    assert [int(t.argmax()) for t in plain.targets] == [c.answer for c in examples] and plain.sharer_picks is None
    assert all(float(t.max()) == 1.0 for t in plain.targets)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["c2c", "lora"])
def test_pure_distillation_learns_the_sharers_ranking(tmp_path, mc_data, method):
    cfg = config(tmp_path, mc_data, method=method, objective="choices", distill_weight=1.0, steps=50,
                 save_every=50, batch_size=4, eval_examples=0, lr=1e-2 if method == "c2c" else 3e-3)
    losses = [m["loss"] for m in metrics(run(cfg)) if "loss" in m]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_held_out_sharer_agreement_starts_at_the_receivers_own(tmp_path, mc_data):
    """Step 0 (a zero-init fuser) agrees with the sharer exactly as often as the receiver alone does."""
    held = config(tmp_path / "held", mc_data, objective="choices", distill_weight=1.0, steps=1, eval_examples=3)
    first = next(m for m in metrics(run(held)) if "eval_loss" in m)
    _, held_out = training.load_examples(held)
    pair, _ = training.build_model(held, tiny("llama"), [tiny("gemma")])
    batch = pair.prepare([split(c)[0] for c in held_out])
    choices = [c.choices for c in held_out]
    with torch.no_grad():
        receiver = pair.choice_scores(batch, choices, fuse=False)
    sharer = pair.sharer_choice_scores(batch, choices)
    agree = sum(int(r.argmax()) == int(s.argmax()) for r, s in zip(receiver, sharer)) / len(held_out)
    assert first["step"] == 0 and first["eval_sharer_agreement"] == pytest.approx(agree)
    plain = config(tmp_path / "plain", mc_data, objective="choices", steps=1, eval_examples=3)
    assert "eval_sharer_agreement" not in next(m for m in metrics(run(plain)) if "eval_loss" in m)


def test_choice_objective_reports_held_out_accuracy_and_needs_choices(tmp_path, mc_data, data):
    cfg = config(tmp_path, mc_data, objective="choices", steps=2, save_every=2, eval_every=2, eval_examples=2)
    held_out = [m for m in metrics(run(cfg)) if "eval_accuracy" in m]
    assert [m["step"] for m in held_out] == [0, 2]  # before any update, then every eval_every steps
    assert held_out[-1]["eval_accuracy"] in (0.0, 0.5, 1.0) and held_out[-1]["eval_loss"] > 0
    with pytest.raises(RecipeError, match="target: choices"):
        run(config(tmp_path / "b", data, objective="choices"))


def test_held_out_evaluation_starts_from_the_receiver_alone(tmp_path, mc_data):
    """Step 0 is evaluated before any update: a zero-init fuser and a fresh LoRA are both the receiver alone."""
    first = []
    for method in ("c2c", "lora"):
        cfg = config(tmp_path / method, mc_data, method=method, objective="choices", steps=1, eval_examples=2)
        first.append(next(m for m in metrics(run(cfg)) if "eval_loss" in m))
    assert first[0]["step"] == first[1]["step"] == 0
    assert first[0]["eval_loss"] == pytest.approx(first[1]["eval_loss"], rel=1e-5)
    assert first[0]["eval_accuracy"] == first[1]["eval_accuracy"]


def test_held_out_shuffled_control_changes_only_what_the_sharer_reads(tmp_path, data):
    cfg = config(tmp_path, data, eval_examples=4, fuser={**SMALL_FUSER.to_dict()})
    _, held_out = training.load_examples(cfg)
    pair, trainable = training.build_model(cfg, tiny("llama"), [tiny("gemma")])
    with torch.no_grad():
        for fuser in pair.layer_fusers():
            fuser.gate_logits.fill_(1.0)

    def held_out_loss(shuffled, fuse=None):
        return training.evaluate_held_out(pair, trainable, held_out, cfg, Runtime(), shuffled, fuse)["eval_loss"]
    assert held_out_loss(True) != held_out_loss(False)
    # without fusion the sharer is not read: the control is the same run
    assert held_out_loss(True, fuse=False) == held_out_loss(False, fuse=False)


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path, data):
    full = run(config(tmp_path / "a", data))
    interrupted = config(tmp_path / "b", data)
    run(interrupted, stop_after=4)  # checkpoint at step 3; steps 4 is lost, as after a crash
    run(interrupted, resume=True)
    a, b = weights(full), weights(interrupted.output)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    # the log reads as one run: step 4 was logged twice (before the kill and when redone), read_metrics keeps one
    assert [m["step"] for m in metrics(interrupted.output) if "loss" in m] == [1, 2, 3, 4, 4, 5, 6, 7, 8]
    resumed = read_metrics(interrupted.output)
    assert [m["step"] for m in resumed if m.get("event") == "resume"] == [3]
    losses = lambda records: [m["loss"] for m in records if "loss" in m]  # noqa: E731
    assert losses(resumed) == pytest.approx(losses(read_metrics(full)), rel=1e-5)


def test_resume_cleans_what_an_interrupted_write_left_behind(tmp_path, data):
    cfg = config(tmp_path, data, steps=6, save_every=2)
    run(cfg, stop_after=4)
    output = Path(cfg.output)
    (output / "fuser.safetensors.k2j3h4x_.tmp").write_bytes(b"half a file")  # what atomic_write leaves at kill -9
    (output / "c2c_config.json.a1b2c3.tmp").write_text("{")
    (output / "checkpoint.partial").mkdir()
    (output / "checkpoint.partial" / "trainable.safetensors").write_bytes(b"half")
    # killed between save_trainer_state's two renames: the last checkpoint moved aside, the new one not yet in place
    (output / "checkpoint").rename(output / "checkpoint.previous")
    (output / "notes.tmp").write_text("a user's own file")  # not an atomic_write temporary: kept
    run(cfg, resume=True)
    assert sorted(p.name for p in output.rglob("*.tmp")) == ["notes.tmp"]
    assert not (output / "checkpoint.partial").exists() and not (output / "checkpoint.previous").exists()
    assert [m["step"] for m in metrics(output) if m.get("event") == "resume"] == [4]
    reference = run(config(tmp_path / "ref", data, steps=6, save_every=2))
    for name, tensor in weights(reference).items():
        torch.testing.assert_close(weights(output)[name], tensor, rtol=1e-5, atol=1e-6)


def test_training_minutes_leave_out_the_pause_of_a_resumed_run(tmp_path):
    hour = 3600.0
    records = [{"time": 0.0, "step": 0}, {"time": 600.0, "step": 10}, {"time": 10 * hour, "event": "resume", "step": 10},
               {"time": 10 * hour + 300.0, "step": 20}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert training_minutes(tmp_path) == 15.0
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:2]))
    assert training_minutes(tmp_path) == 10.0


@pytest.mark.slow
def test_resume_after_kill_9(tmp_path, data):
    cfg = config(tmp_path, data, steps=30, save_every=2)
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same reduction order as this process
    process = subprocess.Popen([sys.executable, str(TESTS / "train_tiny.py"), str(recipe)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = Path(cfg.output) / "checkpoint" / "trainer_state.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (checkpoint.exists() and json.loads(checkpoint.read_text())["step"] >= 4):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = json.loads(checkpoint.read_text())["step"]
    assert 4 <= killed_at < 30
    run(cfg, resume=True)
    reference = run(config(tmp_path / "ref", data, steps=30, save_every=2))
    for name, tensor in weights(reference).items():
        torch.testing.assert_close(weights(cfg.output)[name], tensor, rtol=1e-4, atol=1e-5)


def tiny_model_folders(root: Path) -> dict:
    """The tiny pair saved as model folders, as `c2c train` loads models by their specs."""
    for kind in ("llama", "gemma"):
        tiny(kind).model.save_pretrained(root / kind)
        tiny(kind).tokenizer.save_pretrained(root / kind)
    return {"receiver": str(root / "llama"), "sharers": [str(root / "gemma")]}


@pytest.mark.slow
def test_ctrl_c_in_c2c_train_stops_cleanly_and_resumes_exactly(tmp_path, data):
    """SIGINT to `c2c train`: the step finishes, a checkpoint of it is saved, one line says how to resume, no
    traceback; `c2c train --resume` then reaches the weights of an uninterrupted run."""
    from c2c.cli import main
    models = tiny_model_folders(tmp_path)
    cfg = config(tmp_path, data, steps=30, save_every=7, **models)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({k: v for k, v in cfg.to_dict().items() if k != "recipe_dir"}))
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same reduction order as this process
    process = subprocess.Popen([sys.executable, "-m", "c2c.cli", "train", str(recipe)], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = Path(cfg.output) / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and \
            not (log.exists() and sum('"loss"' in line for line in log.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    stopped = json.loads((Path(cfg.output) / "checkpoint" / "trainer_state.json").read_text())["step"]
    assert 3 <= stopped < 30 and stopped % 7  # the interrupted step was saved, not only the last save_every one
    assert last == (f"stopped after step {stopped} of 30 (Ctrl-C); the checkpoint of step {stopped} is kept; "
                    f"resume with: c2c train --resume {cfg.output}")
    main(["train", "--resume", cfg.output])
    main(["train", str(recipe), "--output", str(tmp_path / "ref")])
    for name, tensor in weights(tmp_path / "ref").items():
        torch.testing.assert_close(weights(cfg.output)[name], tensor, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, data):
    common = dict(steps=4, save_every=4, log_every=1, seed=5,
                  fuser={"hidden_size": 16, "intermediate_size": 16, "dropout": 0.0, "gate_noise": "none"})
    single = config(tmp_path / "one", data, batch_size=4, **common)
    run(single)
    double = config(tmp_path / "two", data, batch_size=2, **common)
    recipe = tmp_path / "two.json"
    recipe.write_text(json.dumps(double.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: a local rendezvous on a free port (localhost:0), so runs on one machine never collide
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                    "--nproc_per_node", "2", str(TESTS / "train_tiny.py"), str(recipe)], env=env, check=True,
                   cwd=ROOT, capture_output=True)
    one, two = weights(single.output), weights(double.output)
    for name in one:
        torch.testing.assert_close(one[name], two[name], rtol=1e-4, atol=1e-5)
    losses = lambda run_config: [m["loss"] for m in metrics(run_config.output) if "loss" in m]  # noqa: E731
    assert losses(single) == pytest.approx(losses(double), rel=1e-4)


def test_sharer_cache_is_reused_and_changes_nothing(tmp_path, data):
    first = run(config(tmp_path / "a", data, steps=6))
    second = run(config(tmp_path / "b", data, steps=6))
    (report,) = [m for m in metrics(second) if m.get("event") == "sharer_cache"]
    (before,) = [m for m in metrics(first) if m.get("event") == "sharer_cache"]
    # 6 steps of 2 rows: 12 look-ups of the 6 examples. The first run stores each in its first epoch and reads it
    # back in its second; the second run finds all 12 stored, and stores nothing more.
    assert (before["misses"], before["hits"], report["misses"], report["hits"]) == (len(QA), len(QA), 0, 12)
    files = sorted(Path(report["folder"]).glob("*.safetensors"))
    assert report["folder"] == before["folder"] and len(files) == len(QA)  # one file per example
    # the store counts the size of its files, those it writes as those it finds when it opens
    assert before["bytes"] == report["bytes"] == sum(f.stat().st_size for f in files)
    for name, tensor in weights(first).items():
        assert torch.equal(tensor, weights(second)[name])


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, data, monkeypatch):
    cfg = config(tmp_path, data, steps=10, save_every=2)
    calls = {"n": 0}
    real = training.objective_sum
    callers = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job

    def poisoned(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] > 5 else loss
    monkeypatch.setattr(training, "objective_sum", poisoned)
    with pytest.raises(TrainingError, match=r"nan at step 6.*step 4.*--resume"):
        run(cfg)
    assert json.loads((Path(cfg.output) / "checkpoint/trainer_state.json").read_text())["step"] == 4
    assert all(torch.isfinite(t).all() for t in weights(cfg.output).values())


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_finishes_the_step_or_twice_abandons_it(tmp_path, data, monkeypatch, presses):
    cfg = config(tmp_path, data, steps=10, save_every=2)
    calls = {"n": 0}
    real = training.objective_sum
    callers = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 5:  # during step 5
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)
        return real(*args)
    monkeypatch.setattr(training, "objective_sum", interrupted)
    expected = (r"stopped after step 5 of 10 \(Ctrl-C\); the checkpoint of step 5" if presses == 1 else
                r"stopped during step 5 of 10 \(Ctrl-C twice\): that step is abandoned; the checkpoint of step 4")
    with pytest.raises(training.TrainingInterrupted, match=expected + r" is kept; resume with: c2c train --resume "):
        run(cfg)
    assert json.loads((Path(cfg.output) / "checkpoint/trainer_state.json").read_text())["step"] == 6 - presses
    assert signal.getsignal(signal.SIGINT) is callers  # the handler is the caller's again


def test_bad_recipes_fail_before_any_model_loads(tmp_path, data, monkeypatch):
    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded before the recipe was checked")
    monkeypatch.setattr(training, "load_model", no_models)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data: [{data}]\nsteps: 2\nlearning_rate: 0.1\n")
    with pytest.raises(RecipeError, match="unknown recipe keys \\['learning_rate'\\]"):
        TrainConfig.from_file(recipe)
    with pytest.raises(RecipeError, match="missing.jsonl not found"):
        train(TrainConfig(data=[str(tmp_path / "missing.jsonl")], steps=2, output=str(tmp_path / "o")))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(RecipeError, match="no examples"):
        train(TrainConfig(data=[str(empty)], steps=2, output=str(tmp_path / "o")))
    with pytest.raises(RecipeError, match="exactly one of steps or epochs"):
        TrainConfig(data=[data])
    with pytest.raises(RecipeError, match="fuser"):
        TrainConfig(data=[data], steps=1, fuser={"hidden": 4})
    with pytest.raises(RecipeError, match="needs objective: choices"):
        TrainConfig(data=[data], steps=1, distill_weight=0.5)
    with pytest.raises(RecipeError, match=r"within \[0, 1\], got 1.5"):
        TrainConfig(data=[data], steps=1, objective="choices", distill_weight=1.5)
    with pytest.raises(RecipeError, match="distill_temperature must be > 0"):
        TrainConfig(data=[data], steps=1, objective="choices", distill_temperature=0)
    with pytest.raises(RecipeError, match="token_alignment 'offset' is unknown; expected one of .*offsets_ahead"):
        TrainConfig(data=[data], steps=1, token_alignment="offset")
    with pytest.raises(RecipeError, match="token_alignment 'first' is unknown; it is now called 'reencode_first'"):
        TrainConfig(data=[data], steps=1, token_alignment="first")
    with pytest.raises(RecipeError, match="layer_map 'last' is unknown"):
        TrainConfig(data=[data], steps=1, layer_map="last")
    with pytest.raises(RecipeError, match="no checkpoint"):
        train(TrainConfig(data=[data], steps=2, output=str(tmp_path / "fresh")), resume=True,
              receiver=tiny("llama"), sharers=[tiny("gemma")])


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes").glob("*.yaml")), ids=lambda path: path.stem)
def test_shipped_recipes_are_valid(recipe):
    config = TrainConfig.from_file(recipe)
    assert config.method in ("c2c", "lora", "translator")  # shipped recipes run offline: built-in models only
    assert {config.receiver, *config.sharers} <= set(BUILTIN_MODELS)
    assert config.data_dir is None  # the data comes from C2C_DATA_DIR (or the hub), never a path in the recipe
    for spec in config.data:  # files relative to the data dir, never outside the repository; skips without them
        path = spec.get("file") if isinstance(spec, dict) else spec
        if path is not None:
            assert not (Path(path).is_absolute() or ".." in Path(path).parts), spec
            real_data(path)
        elif spec.get("benchmark") in BENCHMARKS:
            real_data(BENCHMARKS[spec["benchmark"]].folder)
    if config.method == "translator":
        assert len(fitting_texts(config.data, config.data_dir, config.recipe_dir)) > config.eval_examples
        return
    examples, held_out = training.load_examples(config)
    assert len(examples) == config.max_examples and len(held_out) == config.eval_examples


def test_recipes_read_exponent_numbers_without_a_dot():
    from c2c.training.recipe import load_yaml
    assert load_yaml("lr: 3e-4\nb: 1E5\nc: -2.5e+3\nd: .5e-3\ne: 3.0e-4") == \
        {"lr": 3e-4, "b": 1e5, "c": -2500.0, "d": 5e-4, "e": 3e-4}
    assert load_yaml("a: e5\nb: 3e\nc: 3e-4x\nd: 7") == {"a": "e5", "b": "3e", "c": "3e-4x", "d": 7}


def test_a_recipe_is_its_base_with_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 3\nlr: 0.1\nfuser: {hidden_size: 16, dropout: 0.2}\n"
                                        "data: [a.jsonl, b.jsonl]\n")
    (tmp_path / "mid.yaml").write_text("base: base.yaml\nlr: 0.2\nfuser: {dropout: 0.0}\n")
    (tmp_path / "leaf.yaml").write_text("base: mid.yaml\ndata: [c.jsonl]\n")
    config = TrainConfig.from_file(tmp_path / "leaf.yaml", {"seed": 7})
    assert (config.steps, config.lr, config.seed) == (3, 0.2, 7)
    assert config.fuser == {"hidden_size": 16, "dropout": 0.0}  # mappings merge key by key
    assert config.data == ["c.jsonl"]  # lists are replaced
    assert config.recipe_dir == str(tmp_path.resolve())


def test_a_recipe_base_loop_or_missing_base_is_a_clear_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\nsteps: 1\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(RecipeError, match="its own base"):
        TrainConfig.from_file(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(RecipeError, match=r"nowhere\.yaml does not exist \(the base of .*c\.yaml\)"):
        TrainConfig.from_file(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(RecipeError, match="base must be the path"):
        TrainConfig.from_file(tmp_path / "d.yaml")


def test_shipped_ablations_are_a_few_keys_over_their_base():
    position_free = TrainConfig.from_file(ROOT / "recipes/default_pair_choices_position_free.yaml").to_dict()
    base = TrainConfig.from_file(ROOT / "recipes/default_pair_choices.yaml").to_dict()
    changed = {k for k in base if base[k] != position_free[k]}
    assert changed == {"output", "fuser"}
    assert position_free["fuser"] == {**base["fuser"], "position_free": True}
