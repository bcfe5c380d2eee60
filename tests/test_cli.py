"""The command line over tiny models saved as local folders (the CLI takes model specs, like a user would)."""

import json

import pytest
from tiny import tiny

from c2c.cli import main
from c2c.models import load_model
from c2c.pair import C2CModel

pytestmark = pytest.mark.usefixtures("isolated_cache")  # conversions go to a temporary cache


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for kind in ("llama", "gemma"):
        model = tiny(kind)
        model.model.save_pretrained(root / kind)
        model.tokenizer.save_pretrained(root / kind)
        paths[kind] = str(root / kind)
    return paths


def test_inspect(folders, capsys):
    main(["inspect", "--receiver", folders["llama"], "--sharer", folders["gemma"], "--fuser-hidden", "16", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["receiver"]["layers"] == 4 and report["sharers"][0]["layer_map"] == [0, 0, 1, 2]
    main(["inspect", "--receiver", folders["llama"], "--sharer", folders["gemma"], "--layer-map", "spread"])
    text = capsys.readouterr().out
    assert "layer map (receiver<-sharer 0): 0<-0, 1<-1, 2<-1, 3<-2" in text and "exact" in text


def test_train_generate_and_eval(folders, tmp_path, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "What is the capital of France?"},
                                             {"role": "assistant", "content": "Paris."}]}) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"receiver: {folders['llama']}\nsharers: [{folders['gemma']}]\ndata: [{data}]\nsteps: 2\n"
                      f"eval_examples: 0\nbatch_size: 1\nfuser: {{hidden_size: 8, intermediate_size: 8}}\n")
    main(["train", str(recipe), "--output", str(tmp_path / "run"), "--set", "gate_lr=0.5"])
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["gate_lr"] == 0.5
    main(["generate", "--fuser", str(tmp_path / "run"), "Hello there", "Water boils", "--max-new-tokens", "3",
          "--no-stream"])
    assert len(capsys.readouterr().out.strip().splitlines()) >= 1
    bench = tmp_path / "mc.jsonl"
    bench.write_text("".join(json.dumps({"question": q, "choices": ["Paris", "Rome"], "answer": 0}) + "\n"
                             for q in ("Capital of France?", "Largest city of France?")))
    main(["eval", "--fuser", str(tmp_path / "run"), "--bench", str(bench), "--methods", "receiver,c2c,c2c-shuffled",
          "--scoring", "cloze", "--out", str(tmp_path / "eval")])
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert set(summary["benchmarks"]["mc"]["methods"]) == {"receiver", "c2c", "c2c-shuffled"}
    pair = C2CModel.from_pretrained(tmp_path / "run")
    assert pair.receiver.name == folders["llama"] and load_model(folders["gemma"]).shape == pair.sharers[0].shape


def test_errors_exit_with_a_message(folders, tmp_path):
    with pytest.raises(SystemExit, match="not a c2c checkpoint"):
        main(["generate", "--fuser", str(tmp_path / "nowhere"), "hi"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 1\ndata: [x.jsonl]\nlearning_rate: 3\n")
    with pytest.raises(SystemExit, match="unknown recipe keys"):
        main(["train", str(bad)])
    with pytest.raises(SystemExit, match="not a training run folder"):
        main(["train", "--resume", str(tmp_path)])
