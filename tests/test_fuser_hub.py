"""Fusers on the Hugging Face Hub without the network: a local cache in the hub's layout (offline mode, as
conftest sets), and a fake upload API."""

import json
from pathlib import Path

import huggingface_hub
import pytest
import torch
from conftest import make_pair
from huggingface_hub import constants
from tiny import tiny

from c2c.model.pair import C2CModel, CheckpointError


def cache_snapshot(cache: Path, repo_id: str, revision: str, commit: str, folder: Path) -> None:
    """Put ``folder``'s files into ``cache`` as huggingface_hub stores a downloaded snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def gates_of(pair):
    return pair.gate_logits()[0, :, 0].tolist()


def test_a_fuser_loads_from_the_hub_cache_offline_at_its_revision(tmp_path, hub_cache, monkeypatch):
    main, tagged = make_pair(seed=0), make_pair(seed=1)
    with torch.no_grad():
        next(tagged.layer_fusers()).gate_logits.fill_(-3.0)
    for name, pair in (("main", main), ("v1", tagged)):
        pair.save_pretrained(tmp_path / name)
    cache_snapshot(hub_cache, "owner/fuser", "main", "a" * 40, tmp_path / "main")
    cache_snapshot(hub_cache, "owner/fuser", "v1", "b" * 40, tmp_path / "v1")
    monkeypatch.chdir(tmp_path)  # no local folder named owner/fuser
    models = dict(receiver=tiny("llama"), sharers=[tiny("gemma")])
    assert gates_of(C2CModel.from_pretrained("owner/fuser", **models)) == gates_of(main)
    assert gates_of(C2CModel.from_pretrained("owner/fuser", revision="v1", **models)) == gates_of(tagged)
    with pytest.raises(CheckpointError, match="neither a local folder nor in the Hub cache.*offline"):
        C2CModel.from_pretrained("owner/missing", **models)
    tagged.save_pretrained(tmp_path / "owner" / "fuser")  # a local folder of the same name wins
    assert gates_of(C2CModel.from_pretrained("owner/fuser", **models)) == gates_of(tagged)
    with pytest.raises(CheckpointError, match="applies to a Hub repository"):
        C2CModel.from_pretrained("owner/fuser", revision="v1", **models)


class FakeHub:
    """Records what push_to_hub would send."""

    uploads: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=False, exist_ok=False):
        self.uploads.append(("create", repo_id, private))

    def upload_folder(self, repo_id, folder_path, commit_message, revision=None):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        self.uploads.append(("upload", repo_id, files))
        return f"https://huggingface.co/{repo_id}/commit/123"


def test_push_to_hub_uploads_the_fuser_with_a_model_card(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    FakeHub.uploads = []
    pair = make_pair()
    with torch.no_grad():
        next(pair.layer_fusers()).gate_logits[1] = -2.0
    run = tmp_path / "run"
    pair.save_pretrained(run)
    (run / "train_config.json").write_text(json.dumps({"method": "c2c", "objective": "choices", "steps": 8,
                                                      "data": [{"benchmark": "arc-easy", "split": "train"}]}))
    summary = {"scoring": "cloze", "split": "test", "benchmarks": {"arc-easy": {
        "methods": {"receiver": {"accuracy": 0.41, "n": 100}, "c2c": {"accuracy": 0.45, "n": 100},
                    "c2c-shuffled": {"accuracy": 0.44, "n": 100}},
        "paired": {"c2c - c2c-shuffled": {"difference": 0.01, "ci95": [-0.02, 0.04], "n": 100}}}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    loaded = C2CModel.from_pretrained(run, receiver=tiny("llama"), sharers=[tiny("gemma")])
    url = loaded.push_to_hub("me/my-fuser", summary=tmp_path / "summary.json", private=True)
    assert url.endswith("/commit/123") and FakeHub.uploads[0] == ("create", "me/my-fuser", True)
    files = FakeHub.uploads[1][2]
    assert {"c2c_config.json", "fuser.safetensors", "train_config.json", "eval_summary.json", "README.md"} == set(files)
    card = files["README.md"].decode()
    assert "# C2C fuser: tiny-llama <- tiny-gemma" in card and "token alignment `offsets`" in card
    assert "| 0 | open (+1.00) | shut (-2.00) |" in card  # the gates per layer
    assert "objective `choices`" in card and '"benchmark": "arc-easy"' in card
    assert "| c2c-shuffled | 44.0 (100) |" in card and "arc-easy +1.0 [-2.0, +4.0]" in card
    FakeHub.uploads = []
    pair.save_pretrained(tmp_path / "other", push_to_hub=True, repo_id="me/other")
    assert FakeHub.uploads[0][1] == "me/other" and "README.md" in FakeHub.uploads[1][2]


def test_a_translator_card_names_its_phases_and_its_gain_over_the_shuffled_control():
    from c2c.model.hub import model_card
    from c2c.translator.config import TranslatorConfig
    pair = C2CModel.create(tiny("llama"), [tiny("gemma")], translator=TranslatorConfig(window=0), chat_template=False)
    gain = {"n": 500, "difference": 0.25, "ci95": [0.2, 0.3]}
    summary = {"scoring": "cloze", "split": "test", "benchmarks": {"synthetic-1fact": {
        "methods": {"c2c-translated": {"accuracy": 0.7, "n": 500}, "c2c-translated-shuffled": {"accuracy": 0.45, "n": 500}},
        "paired": {"c2c-translated - c2c-translated-shuffled": gain}}}}
    card = model_card(pair, {"method": "translator", "init_from": "runs/fit", "steps": 3,
                             "distill_data": [{"benchmark": "squad"}]}, summary)
    assert "# C2C context translator: tiny-llama <- tiny-gemma" in card and "residual rank 0" in card
    assert "- started from `runs/fit`" in card and '- self-distillation data: {"benchmark": "squad"}' in card
    assert "| c2c-translated | 70.0 (500) |" in card
    assert "c2c-translated - c2c-translated-shuffled, paired on the same items (points, 95% CI): synthetic-1fact " \
           "+25.0 [+20.0, +30.0]." in card
