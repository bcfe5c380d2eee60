"""Bad input gets one line that says what was given, what was expected and what to do, before any model loads;
and no run ever overwrites another's work (issue 18)."""

import json
import os
import re
import stat

import pytest
from conftest import make_pair

from c2c.cli import main
from c2c.model.pair import CheckpointError, load_config
from c2c.training.train import RecipeError, TrainConfig, train


def recipe(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text,message", [
    ("steps: 3\ndata: [a.jsonl\n", r"not valid YAML at line 3"),
    ("steps: 3\ndata:\n\t- a.jsonl\n", r"not valid YAML at line 3.*spaces, not tabs"),
    ('steps: "ten"\ndata: [a.jsonl]\n', r"steps must be an integer or null, got 'ten' \(str\)"),
    ('steps: 3\nbatch_size: "2"\ndata: [a.jsonl]\n', r"batch_size must be an integer, got '2'"),
    ("steps: 3\nlr: fast\ndata: [a.jsonl]\n", r"lr must be a number"),
    ("steps: 3\nchat_template: maybe\ndata: [a.jsonl]\n", r"chat_template must be true/false"),
    ("steps: 3\nfuser: {hidden_size: big}\ndata: [a.jsonl]\n", r"fuser hidden_size must be an integer"),
])
def test_bad_recipes_name_the_line_or_the_field(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message):
        TrainConfig.from_file(recipe(tmp_path, text))
    with pytest.raises(SystemExit, match=message):
        main(["train", str(recipe(tmp_path, text))])


def test_train_without_a_recipe_says_to_give_one():
    with pytest.raises(SystemExit, match="give a recipe"):
        main(["train"])


def damaged(tmp_path, edit) -> str:
    folder = tmp_path / "fuser"
    make_pair().save_pretrained(folder)
    config = json.loads((folder / "c2c_config.json").read_text())
    (folder / "c2c_config.json").write_text(json.dumps(edit(config)))
    return str(folder)


def _set(config, path, value):
    target = config
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return config


@pytest.mark.parametrize("edit,message", [
    (lambda c: [c], "must be a JSON object, got a list"),
    (lambda c: _set(c, ["sharers", 0, "layer_map"], "abc"), "layer_map must be a list"),
    (lambda c: _set(c, ["sharers", 0, "layer_map"], [0, 0, 1, 99]), r"layer_map \[0, 0, 1, 99\] must list sharer "
                                                                    r"layers in \[0, 3\)"),
    (lambda c: _set(c, ["sharers", 0, "layer_map"], [0, 1]), "layer_map has 2 entries, the receiver 4 layers"),
    (lambda c: _set(c, ["chat_template"], "yes"), "chat_template must be true/false"),
    (lambda c: _set(c, ["receiver"], 5), "receiver must be a text"),
    (lambda c: _set(c, ["fuser", "dropout"], "none"), "dropout must be a number"),
    (lambda c: _set(c, ["sharers"], {"model": "x"}), "sharers must be a list of objects"),
    (lambda c: _set(c, ["hidden_size"], 8), r"unknown keys \['hidden_size'\] \(known: \["),  # not an __init__ error
    (lambda c: _set(c, ["sharers", 0, "window"], 8), r"unknown sharer keys \['window'\]"),
])
def test_a_damaged_checkpoint_config_is_refused_before_any_model_loads(tmp_path, edit, message):
    folder = damaged(tmp_path, edit)
    with pytest.raises(CheckpointError, match=message):
        load_config(folder)  # C2CModel.from_pretrained reads this first, before it loads the models
    with pytest.raises(SystemExit, match=message):
        main(["generate", "--fuser", folder, "hi"])


def test_an_earlier_run_is_never_overwritten(tmp_path):
    finished = tmp_path / "run"
    finished.mkdir()
    (finished / "train_config.json").write_text("{}")
    (finished / "fuser.safetensors").write_bytes(b"68 minutes of training")
    config = TrainConfig(output=str(finished), steps=1, data=[str(tmp_path / "qa.jsonl")])
    # a run that saved no checkpoint: --resume would refuse it, so only what works is offered
    with pytest.raises(RecipeError, match=r"already holds fuser.safetensors, train_config.json.*never overwritten\. "
                                          r"It saved no checkpoint to resume from: start it afresh with --overwrite"):
        train(config)
    with pytest.raises(RecipeError, match=r"no checkpoint.*afresh with --overwrite"):  # before any model loads
        train(config, resume=True)
    (finished / "checkpoint").mkdir()
    (finished / "checkpoint" / "trainer_state.json").write_text("{}")
    with pytest.raises(RecipeError, match=r"already holds checkpoint, fuser.safetensors, train_config.json.*"
                                          r"Continue it with --resume .*--overwrite"):
        train(config)
    assert (finished / "fuser.safetensors").read_bytes() == b"68 minutes of training"
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("not a run")
    for overwrite in (False, True):  # not a run folder: neither --resume nor --overwrite is offered
        with pytest.raises(RecipeError, match=r"holds mine.txt, and it is not a c2c run folder .*choose another "
                                              r"--output, or empty that folder yourself$") as refused:
            train(TrainConfig(output=str(other), steps=1, data=["x.jsonl"]), overwrite=overwrite)
        assert "--resume" not in str(refused.value) and "--overwrite" not in str(refused.value)
    assert (other / "mine.txt").is_file()
    with pytest.raises(RecipeError, match="is a file"):
        train(TrainConfig(output=str(other / "mine.txt"), steps=1, data=["x.jsonl"]))
    with pytest.raises(RecipeError, match="not found"):  # --overwrite clears a run folder, then the run starts
        train(config, overwrite=True)
    assert not finished.exists()


def test_saved_files_keep_the_permissions_the_umask_gives(tmp_path):
    previous = os.umask(0o022)
    try:
        make_pair().save_pretrained(tmp_path / "fuser")
    finally:
        os.umask(previous)
    for name in ("fuser.safetensors", "c2c_config.json"):
        assert stat.S_IMODE((tmp_path / "fuser" / name).stat().st_mode) == 0o644


# ------------------------------------------------------------------------------------------------ ranges (issue 31)
# Every numeric field of a recipe, with a value out of its range (a recipe key, or MAPPING.KEY inside the fuser,
# translator or lora mapping). Each is refused with the field, the value and a valid example before a model loads.
OUT_OF_RANGE = {
    "distill_weight": 1.5, "distill_temperature": 0, "max_examples": 0, "eval_examples": -1, "max_length": 0,
    "steps": 0, "epochs": 0, "batch_size": 0, "grad_accum": -1, "lr": -1, "gate_lr": 0, "weight_decay": -0.1,
    "warmup": 2, "clip": 0, "seed": -3, "log_every": 0, "eval_every": -5, "save_every": 0, "sharer_cache_gb": -1,
    "max_text_chars": 0, "teacher_tokens": -1, "reconstruction_weight": -0.5,
    "fuser.hidden_size": 0, "fuser.intermediate_size": -16, "fuser.num_layers": 1, "fuser.dropout": 1.0,
    "fuser.temperature_start": 0, "fuser.temperature_end": -0.1,
    "translator.window": -1, "translator.ridge": [0.1, -1], "translator.max_context_tokens": 0,
    "translator.residual_rank": -2,
    "lora.r": 0, "lora.lora_alpha": -32, "lora.lora_dropout": 1,
}
NOT_FINITE = {"lr": float("nan"), "gate_lr": float("inf"), "epochs": float("nan"), "fuser.dropout": float("nan"),
              "translator.ridge": [float("inf")]}


def numeric_fields(cls) -> set[str]:
    import typing
    from dataclasses import fields
    hints = typing.get_type_hints(cls)
    return {f.name for f in fields(cls) if {int, float} & set(typing.get_args(hints[f.name]) or [hints[f.name]])}


def test_every_numeric_recipe_field_has_a_range_and_a_case():
    from c2c.model.config import FuserConfig
    from c2c.training.recipe import LORA_RANGES, RANGES
    from c2c.translator.config import TranslatorConfig
    assert numeric_fields(TrainConfig) == set(RANGES)
    expected = set(RANGES) | {f"fuser.{n}" for n in numeric_fields(FuserConfig)} | \
        {f"translator.{n}" for n in numeric_fields(TranslatorConfig) | {"ridge"}} | {f"lora.{n}" for n in LORA_RANGES}
    assert set(OUT_OF_RANGE) == expected


def base_recipe(key: str) -> dict:
    if key.startswith("translator.") or key in ("max_text_chars", "teacher_tokens", "reconstruction_weight"):
        return {"method": "translator", "data": ["a.jsonl"], "steps": 2, "distill_data": ["b.jsonl"]}
    return {"method": "lora" if key.startswith("lora.") else "c2c", "data": ["a.jsonl"], "steps": 2}


@pytest.mark.parametrize("key,value", [*OUT_OF_RANGE.items(), *NOT_FINITE.items()],
                         ids=[*OUT_OF_RANGE, *(f"{k}-{v}" for k, v in NOT_FINITE.items())])
def test_every_numeric_recipe_field_out_of_range_is_refused_before_any_model_loads(tmp_path, monkeypatch, key, value):
    import math

    import yaml

    import c2c.training.train as training
    monkeypatch.setattr(training, "load_model", lambda *a, **k: pytest.fail("a model loaded"))
    base = base_recipe(key)
    if key in ("steps", "epochs"):
        base.pop("steps")
    mapping, _, name = key.rpartition(".")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**base, **({mapping: {name: value}} if mapping else {name: value})}))
    finite = all(math.isfinite(v) for v in (value if isinstance(value, list) else [value]))
    shown = re.escape(repr(value)) if finite else ".*"
    message = rf"{name} must( each)? be (>=|>|within) .*got {shown}; e\.g\. {name}: "
    with pytest.raises(RecipeError, match=message):
        TrainConfig.from_file(path)
    with pytest.raises(SystemExit, match=message):
        main(["train", str(path)])


@pytest.mark.parametrize("flags,message", [
    (["--epochs", "0"], r"epochs must be > 0, got 0.0; e\.g\. epochs: 1"),
    (["--epochs", "-2"], r"epochs must be > 0, got -2.0"),
    (["--steps", "0"], r"steps must be >= 1, got 0; e\.g\. steps: 300"),
    (["--set", "steps=-5"], r"steps must be >= 1, got -5"),
    (["--set", "lr=-1"], r"lr must be > 0, got -1"),
    (["--lr", "nan"], r"lr must be > 0, got nan"),
    (["--set", "fuser.dropout=1.5"], r"fuser dropout must be within \[0, 1\), got 1.5"),
])
def test_out_of_range_flags_of_c2c_train_are_one_line_errors(tmp_path, monkeypatch, flags, message):
    import c2c.training.train as training
    monkeypatch.setattr(training, "load_model", lambda *a, **k: pytest.fail("a model loaded"))
    path = recipe(tmp_path, "steps: 3\ndata: [a.jsonl]\n")
    with pytest.raises(SystemExit, match=message):
        main(["train", str(path), *flags])
