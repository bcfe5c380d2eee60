"""The command line over tiny models saved as local folders (the CLI takes model specs, like a user would)."""

import json

import pytest
from tiny import tiny

from c2c.cli import main
from c2c.core.models import load_model
from c2c.model.pair import C2CModel

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
                      f"eval_examples: 0\nbatch_size: 1\nfuser: {{hidden_size: 8, intermediate_size: 8}}\nlr: 2e-4\n")
    main(["train", str(recipe), "--output", str(tmp_path / "run"), "--set", "gate_lr=5e-1"])  # exponents, no dot
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["gate_lr"] == 0.5 and saved["lr"] == 2e-4
    assert capsys.readouterr().out == f"saved to {tmp_path / 'run'}\n"
    main(["generate", "--fuser", str(tmp_path / "run"), "Hello there", "Water boils", "--max-new-tokens", "3",
          "--no-stream"])
    trained = C2CModel.from_pretrained(tmp_path / "run")  # without --sample: greedy, one answer per line
    expected = trained.generate(["Hello there", "Water boils"], max_new_tokens=3)
    assert capsys.readouterr().out == "".join(f"{answer}\n" for answer in expected)
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


@pytest.mark.parametrize("argv,message", [
    (["generate", "hi", "--top-p", "5", "--sample"], r"--top-p must be in \(0, 1\], got 5"),
    (["generate", "hi", "--temperature", "0.3"], "--temperature only apply with --sample"),
    (["generate", "hi", "--sample", "--temperature", "0"], "--temperature must be > 0"),
    (["generate", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["generate", "  "], "a prompt is empty"),
    (["eval", "--bench", "arc-easy", "--method-limit", "t2t"], "expected METHOD=N"),
    (["chat", "--max-new-tokens", "-1"], "--max-new-tokens must be >= 1"),
])
def test_bad_arguments_are_refused_before_any_model_loads(argv, message, tmp_path):
    # a fuser folder that does not exist: the argument error must come first
    with pytest.raises(SystemExit, match=message):
        main(argv + ["--fuser", str(tmp_path / "no-such-fuser")])


def test_eval_refuses_a_file_as_out_and_an_empty_benchmark(folders, tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(SystemExit, match="--out .* is a file"):
        main(["eval", "--bench", "arc-easy", "--out", str(tmp_path / "taken")])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    spec = ["--receiver", folders["llama"], "--sharer", folders["gemma"], "--out", str(tmp_path / "e")]
    with pytest.raises(SystemExit, match=r"empty\.jsonl: no usable items .* nothing to evaluate"):
        main(["eval", "--bench", str(empty), "--methods", "receiver", "--scoring", "cloze", *spec])
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"question": "Capital of France?", "choices": ["Paris", "Rome"], "answer": 0}) + "\n"
                     + json.dumps({"question": "Broken", "choices": ["a"], "answer": 5}) + "\n")
    main(["eval", "--bench", str(mixed), "--methods", "receiver", "--scoring", "cloze", "--skip-bad", *spec])
    assert "--skip-bad skipped 1 malformed rows" in capsys.readouterr().err  # said on the terminal too


def test_a_choice_fuser_warns_before_writing_text_and_loading_bars_are_quiet(folders, tmp_path, capsys):
    fuser = tmp_path / "fuser"
    C2CModel.create(load_model(folders["llama"]), [load_model(folders["gemma"])]).save_pretrained(fuser)
    (fuser / "train_config.json").write_text(json.dumps({"objective": "choices"}))
    main(["generate", "--fuser", str(fuser), "hi", "--max-new-tokens", "2", "--no-stream"])
    err = capsys.readouterr().err
    assert "trained with objective: choices" in err and "Loading weights" not in err
    main(["generate", "--fuser", str(fuser), "hi", "--max-new-tokens", "2", "--no-stream", "--verbose"])
    assert "Loading weights" in capsys.readouterr().err


def test_help_comes_back_without_importing_torch():
    import subprocess
    import sys
    code = "import sys; from c2c.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_configs_and_recipes_load_and_validate_without_torch():
    """The checkpoint config, a recipe and the translator's settings are plain data: no torch to read or check them."""
    import subprocess
    import sys
    code = ("import sys\n"
            "from c2c.model.config import C2CConfig, FuserConfig\n"
            "from c2c.training.recipe import TrainConfig\n"
            "from c2c.translator.config import TranslatorConfig\n"
            "FuserConfig.from_dict({'hidden_size': 8}), TranslatorConfig.from_dict({'window': 1})\n"
            "TrainConfig.from_dict({'output': 'x', 'steps': 1, 'data': ['arc-easy']})\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
