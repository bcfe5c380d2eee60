"""Tests for c2c.data.hub: benchmarks from the Hugging Face hub, offline, through a fake `datasets` module.

The fake serves rows in each default dataset's real hub schema; the loaded items are compared with what
the local loader gives for the same rows in the shared data layout.
"""

from __future__ import annotations

import sys
import types

import pytest
from conftest import real_data
from test_data import REDUX_HEADER, arc_original, jsonl, write

from c2c.data import BENCHMARKS, DataError, load_benchmark, load_training_data
from c2c.data.hub import CEVAL_SUBJECTS, HUB, MMLU_SUBJECTS


class DatasetNotFoundError(FileNotFoundError):
    """As `datasets` raises for an id that is not on the hub."""


class FakeHub:
    """`datasets.load_dataset` over {path: {config: {split: rows}}}; records every call."""

    def __init__(self):
        self.data: dict = {}
        self.calls: list[tuple] = []

    def add(self, path, config, split, rows):
        self.data.setdefault(path, {}).setdefault(config, {})[split] = rows

    def load_dataset(self, path, name=None, split=None, **kwargs):
        self.calls.append((path, name, split))
        if path not in self.data:
            raise DatasetNotFoundError(f"Dataset '{path}' doesn't exist on the Hub or cannot be accessed.")
        configs = self.data[path]
        if name not in configs:
            raise ValueError(f"BuilderConfig '{name}' not found.\nAvailable: {sorted(map(str, configs))}")
        if split not in configs[name]:
            raise ValueError(f'Unknown split "{split}". Should be one of {list(configs[name])}.')
        return configs[name][split]


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub()
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake.load_dataset))
    return fake


def hf_arc(id_, labels, key, stem="Which one?"):
    """`arc_original` in the hub's ai2_arc / commonsense_qa schema."""
    return {"id": id_, "question": stem, "choices": {"text": [f"opt {x}" for x in labels], "label": list(labels)},
            "answerKey": key}


def redux(question, answer, error_type, correct_answer=None):
    return {"question": question, "choices": ["a", "b", "c", "d"], "answer": answer, "error_type": error_type,
            "source": "", "correct_answer": correct_answer, "potential_reason": ""}


# Each case: benchmark, split, the hub calls expected, the hub rows per call, the equivalent local files.
REDUX_LOCAL = [
    "Q ok;['a', 'b', 'c', 'd'];0;ok;;;",
    "Q fix letter;['a', 'b', 'c', 'd'];0;wrong_groundtruth;;C;",
    "Q fix index;['a', 'b', 'c', 'd'];0;wrong_groundtruth;;3;",
    "Q no fix;['a', 'b', 'c', 'd'];1;wrong_groundtruth;;;",
    "Q none;['a', 'b', 'c', 'd'];1;no_correct_answer;;x;",
    "Q expert;['a', 'b', 'c', 'd'];1;expert;;;",
    "Q clarity;['a', 'b', 'c', 'd'];2;bad_question_clarity;;;",
    "Q multi;['a', 'b', 'c', 'd'];3;multiple_correct_answers;;0 or 3;",
]
REDUX_HUB = [
    redux("Q ok", 0, "ok"), redux("Q fix letter", 0, "wrong_groundtruth", "C"),
    redux("Q fix index", 0, "wrong_groundtruth", "3"), redux("Q no fix", 1, "wrong_groundtruth"),
    redux("Q none", 1, "no_correct_answer", "x"), redux("Q expert", 1, "expert"),
    redux("Q clarity", 2, "bad_question_clarity"), redux("Q multi", 3, "multiple_correct_answers", "0 or 3"),
]
MMLU_HEADER = "question,choice0,choice1,choice2,choice3,answer\n"
CASES = [
    ("arc-easy", "dev", {("allenai/ai2_arc", "ARC-Easy", "validation"): [hf_arc("a1", "ABCD", "C")]},
     {"arc/ARC-Easy/dev.jsonl": jsonl(arc_original("a1", "ABCD", "C"))}),
    ("arc-challenge", "test",
     {("allenai/ai2_arc", "ARC-Challenge", "test"): [hf_arc("a2", "1234", "1"), hf_arc("a3", "ABCDE", "E")]},
     {"arc/ARC-Challenge/test.jsonl": jsonl(arc_original("a2", "1234", "1"), arc_original("a3", "ABCDE", "E"))}),
    ("openbookqa", "validation",
     {("allenai/openbookqa", "main", "validation"): [{"id": "8-1", "question_stem": "Stem?", "answerKey": "A",
                                                      "choices": {"text": ["Deep sea", "fish", "Long", "Far"],
                                                                  "label": ["A", "B", "C", "D"]}}]},
     {"openbookqa/dev.tsv": "ID\tQuestion Stem\tChoices\tComplete Question\tAnswer Key\n"
                            "8-1\tStem?\t(A) Deep sea (B) fish (C) Long (D) Far\tignored\tA\n"}),
    ("mmlu", "test",
     {("cais/mmlu", "all", "test"): [
         {"question": "Alg?", "subject": "abstract_algebra", "choices": ["0", "4", "2", "6"], "answer": 1},
         {"question": "Next", "subject": "abstract_algebra", "choices": ["a", "b", "c", "d"], "answer": 3},
         {"question": "Bone?", "subject": "anatomy", "choices": ["a", "b", "c", "d"], "answer": 0}]},
     {"mmlu/test/abstract_algebra_test.csv": MMLU_HEADER + "Alg?,0,4,2,6,1\nNext,a,b,c,d,3\n",
      "mmlu/test/anatomy_test.csv": MMLU_HEADER + "Bone?,a,b,c,d,0\n"}),
    ("mmlu-redux", "test",
     {("edinburgh-dawg/mmlu-redux-2.0", s, "test"): REDUX_HUB if s == "anatomy" else [] for s in MMLU_SUBJECTS},
     {"mmlu_redux/mmlu_anatomy.csv": REDUX_HEADER + "\n".join(REDUX_LOCAL) + "\n"}),
    ("ceval", "val",
     {("ceval/ceval-exam", s, "val"): [{"id": 0, "question": "问题一____。", "A": "甲", "B": "乙", "C": "丙",
                                        "D": "丁", "answer": "D", "explanation": ""}] if s == "law" else []
      for s in CEVAL_SUBJECTS},
     {"ceval/val/law_val.csv": "id,question,A,B,C,D,answer\n0,问题一____。,甲,乙,丙,丁,D\n"}),
    ("commonsenseqa", "dev",
     {("tau/commonsense_qa", None, "validation"): [{**hf_arc("c1", "ABCDE", "E", "Where?"),
                                                    "question_concept": "place"}]},
     {"commonsenseqa/dev.jsonl": jsonl(arc_original("c1", "ABCDE", "E", "Where?"))}),
]


@pytest.mark.parametrize("name, split, served, local", CASES, ids=[c[0] for c in CASES])
def test_default_datasets_give_the_local_items(hub, tmp_path, name, split, served, local):
    for key, rows in served.items():
        hub.add(*key, rows)
    for rel, text in local.items():
        write(tmp_path, rel, text)
    got = load_benchmark(name, split, data_dir="hf")
    assert hub.calls == list(served)  # dataset id, config and hub split name (dev -> validation)
    want = load_benchmark(name, split, data_dir=tmp_path)
    assert got.items == want.items and got.items and got.split == want.split
    assert set(got.report) == set(want.report)
    for key in ("rows_read", "kept", "dropped", "bad_rows", "notes", "selected"):
        assert got.report[key] == want.report[key], key
    assert len(got.report["files"]) == len(served)


def test_mmlu_redux_rules_on_the_hub(hub):
    """The paper's rules, as for the local files: no_correct_answer / expert dropped, fixes applied."""
    for subject in MMLU_SUBJECTS:
        hub.add("edinburgh-dawg/mmlu-redux-2.0", subject, "test", REDUX_HUB if subject == "virology" else [])
    bench = load_benchmark("mmlu-redux", data_dir="hf")
    assert {i.question: i.answer for i in bench.items} == {
        "Q ok": 0, "Q fix letter": 2, "Q fix index": 3, "Q clarity": 2, "Q multi": 3}
    assert bench.report["dropped"] == {"no_correct_answer": 1, "expert": 1, "wrong_groundtruth_without_fix": 1}
    assert bench.report["notes"]["answer_fixed"] == 2
    assert {i.subject for i in bench.items} == {"virology"} and bench.items[0].id == "virology/0"
    assert "edinburgh-dawg/mmlu-redux-2.0 (config virology, split test)" in bench.report["files"]


def test_splits_without_answers_are_refused_before_loading(hub):
    with pytest.raises(DataError, match=r"ceval split 'test' is not usable: .*use split='val'"):
        load_benchmark("ceval", "test", data_dir="hf")
    with pytest.raises(DataError, match=r"commonsenseqa split 'test' is not usable"):
        load_benchmark("commonsenseqa", "test", data_dir="hf:")
    assert hub.calls == []


def test_ids_and_configs(hub):
    """hf:OWNER/NAME[:CONFIG] and OWNER/NAME; a default id keeps its schema under another config."""
    hub.add("allenai/ai2_arc", "ARC-Challenge", "validation", [hf_arc("x", "AB", "B")])
    hub.add("cais/mmlu", "anatomy", "dev", [{"question": "Q", "subject": "anatomy", "choices": ["a", "b"],
                                            "answer": 1}])
    hub.add("edinburgh-dawg/mmlu-redux-2.0", "anatomy", "test", REDUX_HUB[:1])
    assert load_benchmark("arc-easy", "dev", data_dir="hf:allenai/ai2_arc:ARC-Challenge").items[0].answer == 1
    (item,) = load_benchmark("mmlu", "dev", data_dir="hf:cais/mmlu:anatomy").items
    assert (item.id, item.subject, item.answer) == ("anatomy/0", "anatomy", 1)
    (item,) = load_benchmark("mmlu-redux", data_dir="hf:edinburgh-dawg/mmlu-redux-2.0:anatomy").items
    assert (item.id, item.subject) == ("anatomy/0", "anatomy")
    assert hub.calls == [("allenai/ai2_arc", "ARC-Challenge", "validation"), ("cais/mmlu", "anatomy", "dev"),
                         ("edinburgh-dawg/mmlu-redux-2.0", "anatomy", "test")]


def quiz(n=3):
    """Generic rows: answers as an index or a letter, no ids."""
    return [{"question": f"Q{i}", "choices": ["a", "b", "c"], "answer": [0, "B", 2][i % 3]} for i in range(n)]


def test_user_dataset_uses_the_generic_schema(hub, tmp_path):
    rows = quiz() + [{"id": "x7", "question": "Q", "choices": ["a", "b"], "answer": "b", "subject": "misc"}]
    hub.add("me/quiz", None, "test", rows)
    hub.add("me/quiz", "hard", "train", rows[:1])
    bench = load_benchmark("quiz", data_dir="hf:me/quiz")
    local = load_benchmark(str(write(tmp_path, "quiz.jsonl", jsonl(*rows))))
    assert bench.items == local.items and bench.name == "quiz" and bench.split == "test"
    assert [i.id for i in bench.items] == ["quiz/0", "quiz/1", "quiz/2", "x7"]
    assert bench.report["files"] == ["me/quiz (split test)"]
    assert load_benchmark("quiz", "train", data_dir="hf:me/quiz:hard").items[0].id == "hard/0"
    assert hub.calls == [("me/quiz", None, "test"), ("me/quiz", "hard", "train")]
    with pytest.raises(DataError, match=r"'quiz' has no default Hugging Face dataset .*hf:OWNER/NAME"):
        load_benchmark("quiz", data_dir="hf")


def test_limit_and_seed_as_for_local_files(hub, tmp_path):
    rows = [{"id": f"i{n}", "question": f"Q{n}", "choices": ["a", "b"], "answer": n % 2} for n in range(50)]
    hub.add("me/quiz", None, "test", rows)
    path = str(write(tmp_path, "b.jsonl", jsonl(*rows)))
    ids = lambda bench: [i.id for i in bench.items]  # noqa: E731
    picked = load_benchmark("quiz", data_dir="me/quiz", limit=10, seed=1)
    assert ids(picked) == ids(load_benchmark(path, limit=10, seed=1))
    assert ids(picked) != ids(load_benchmark("quiz", data_dir="me/quiz", limit=10, seed=2))
    assert picked.report["kept"] == 50 and picked.report["selected"] == 10


def test_malformed_rows_name_dataset_config_split_and_row(hub):
    hub.add("me/quiz", "hard", "test", quiz(2) + [{"question": "Q", "choices": ["a", "b"], "answer": "C"}])
    with pytest.raises(DataError) as err:
        load_benchmark("quiz", data_dir="hf:me/quiz:hard")
    where = "me/quiz (config hard, split test) row 2"
    assert f"{where}: answer 'C'" in str(err.value) and "--skip-bad" in str(err.value)
    bench = load_benchmark("quiz", data_dir="hf:me/quiz:hard", skip_bad=True)
    assert len(bench.items) == 2 and bench.report["dropped"] == {"malformed": 1}
    assert bench.report["bad_rows"][0].startswith(f"{where}: answer 'C'")
    hub.add("allenai/ai2_arc", "ARC-Easy", "validation", [hf_arc("a1", "ABCD", "F")])
    with pytest.raises(DataError, match=r"^allenai/ai2_arc \(config ARC-Easy, split validation\) row 0: answer key"):
        load_benchmark("arc-easy", "dev", data_dir="hf")
    hub.add("allenai/openbookqa", "main", "test", [{"id": "o", "choices": {}, "answerKey": "A"}])
    with pytest.raises(DataError, match=r"split test\) row 0: no field 'question_stem'"):
        load_benchmark("openbookqa", data_dir="hf")


@pytest.mark.parametrize(
    "data_dir, asked, cause",
    [
        ("hf:nobody/nothing", r"nobody/nothing \(split test\)",
         r"DatasetNotFoundError: Dataset 'nobody/nothing' doesn't exist"),
        ("hf:allenai/ai2_arc:ARC-Hard", r"allenai/ai2_arc \(config ARC-Hard, split test\)",
         r"ValueError: BuilderConfig 'ARC-Hard' not found\. Available: \['ARC-Challenge'\]"),
        ("hf:allenai/ai2_arc", r"allenai/ai2_arc \(config ARC-Challenge, split train\)",
         r"ValueError: Unknown split \"train\"\. Should be one of \['test'\]"),
    ],
)
def test_load_errors_say_what_was_asked_and_how_to_fix(hub, data_dir, asked, cause):
    hub.add("allenai/ai2_arc", "ARC-Challenge", "test", [])
    split = "train" if data_dir == "hf:allenai/ai2_arc" else "test"
    fix = r"\. Check the id, or run where the hub is reachable, or pass a local folder with --data-dir"
    with pytest.raises(DataError, match=rf"Hugging Face dataset {asked} not loaded: {cause}[^.]*{fix}"):
        load_benchmark("arc-challenge", split, data_dir=data_dir)


def test_without_datasets_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` now raises ImportError
    with pytest.raises(DataError, match=r"needs the `datasets` package: pip install 'c2c\[hub\]'.*--data-dir"):
        load_benchmark("arc-easy", data_dir="hf")


def test_local_folders_win_and_owner_name_goes_to_the_hub(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for folder in ("me/quiz", "hf"):
        write(tmp_path, f"{folder}/arc/ARC-Easy/dev.jsonl", jsonl(arc_original("local", "AB", "A")))
        assert load_benchmark("arc-easy", "dev", data_dir=folder).items[0].id == "local"
    assert hub.calls == []
    hub.add("me/other", None, "dev", [{"id": "remote", "question": "Q", "choices": ["a", "b"], "answer": 1}])
    assert load_benchmark("arc-easy", "dev", data_dir="me/other").items[0].id == "remote"  # no such local path
    assert hub.calls == [("me/other", None, "dev")]
    with pytest.raises(DataError, match=r"data folder .*nowhere/arc/ARC-Easy not found"):
        load_benchmark("arc-easy", "dev", data_dir=str(tmp_path / "nowhere"))  # not OWNER/NAME-shaped
    assert len(hub.calls) == 1
    generic = write(tmp_path, "hf/q.jsonl", jsonl({"id": "file", "question": "Q", "choices": ["a", "b"], "answer": 0}))
    assert load_benchmark(str(generic), data_dir="hf").items[0].id == "file"  # a file name ignores data_dir


def test_training_data_from_the_hub(hub):
    """Recipes' data_dir reaches load_benchmark unchanged."""
    hub.add("allenai/ai2_arc", "ARC-Easy", "train", [hf_arc("a1", "ABCD", "B")])
    (conversation,) = load_training_data({"benchmark": "arc-easy", "target": "text"}, data_dir="hf")
    assert conversation.messages[-1]["content"] == "opt B"


def test_every_benchmark_has_a_default_and_subjects_match_the_shared_files():
    # the context benchmarks read files the hub datasets do not have (evidence passages, KVComm's Tipsheets)
    local_only = {"arc-easy-evidence", "arc-challenge-evidence", "tipsheets"}
    assert set(HUB) == set(BENCHMARKS) - local_only and len(MMLU_SUBJECTS) == 57 and len(CEVAL_SUBJECTS) == 52
    for folder, pattern, subjects in [("mmlu_redux", "mmlu_*.csv", MMLU_SUBJECTS),
                                      ("ceval/val", "*_val.csv", CEVAL_SUBJECTS)]:
        files = sorted(real_data(folder).glob(pattern))  # skips, with the reason, without the real data
        names = [f.stem.removeprefix("mmlu_").removesuffix("_val") for f in files]
        assert names == list(subjects), folder


# --------------------------------------------------------------------------- no data dir: the hub, else one error


def test_data_dir_beats_c2c_data_dir_beats_the_hub(hub, tmp_path, monkeypatch):
    for source in ("explicit", "env"):
        write(tmp_path, f"{source}/arc/ARC-Easy/dev.jsonl", jsonl(arc_original(source, "AB", "A")))
    hub.add("allenai/ai2_arc", "ARC-Easy", "validation", [hf_arc("hub", "AB", "A")])
    first = lambda **kw: load_benchmark("arc-easy", "dev", **kw).items[0].id  # noqa: E731
    monkeypatch.setenv("C2C_DATA_DIR", str(tmp_path / "env"))  # read at each call, not at import
    assert first(data_dir=tmp_path / "explicit") == "explicit"
    assert first() == "env"
    assert hub.calls == []
    monkeypatch.setenv("C2C_DATA_DIR", "")  # empty: as unset
    assert first() == "hub"
    monkeypatch.delenv("C2C_DATA_DIR")
    assert first() == "hub" and first(data_dir=tmp_path / "explicit") == "explicit"
    assert hub.calls == [("allenai/ai2_arc", "ARC-Easy", "validation")] * 2
    monkeypatch.setenv("C2C_DATA_DIR", "hf")  # the variable takes --data-dir's values
    assert first() == "hub"
    monkeypatch.setenv("C2C_DATA_DIR", str(tmp_path / "nowhere"))  # given but wrong: said so, no hub
    with pytest.raises(DataError, match=r"data folder .*nowhere/arc/ARC-Easy not found \(data dir from C2C_DATA_DIR="):
        first()
    assert hub.calls == [("allenai/ai2_arc", "ARC-Easy", "validation")] * 3  # "hf" is no folder here: the hub


THREE_WAYS = (r"^arc-challenge: no data\. Tried, in order: data_dir= / --data-dir \(not given\); the C2C_DATA_DIR "
              r"environment variable \(not set\); the Hugging Face hub \(allenai/ai2_arc\): {cause}.*"
              r"Give the data one of three ways: --data-dir DIR \(data_dir=DIR\), a folder that holds "
              r"arc/ARC-Challenge/\{{split\}}\.jsonl; or set C2C_DATA_DIR=DIR; or pip install 'c2c\[hub\]' and run "
              r"with network access")


def test_no_data_anywhere_is_one_error_naming_all_three(monkeypatch):
    monkeypatch.delenv("C2C_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed (c2c[hub] and c2c[lm-eval] bring it)
    with pytest.raises(DataError, match=THREE_WAYS.format(cause=r"loading from the Hugging Face hub needs the "
                                                                r"`datasets` package")):
        load_benchmark("arc-challenge")


def test_no_data_and_the_hub_unreachable(hub, monkeypatch):
    monkeypatch.delenv("C2C_DATA_DIR", raising=False)  # `datasets` offline raises (fast) for what it has not cached
    with pytest.raises(DataError, match=THREE_WAYS.format(cause=r"Hugging Face dataset allenai/ai2_arc \(config "
                                                                r"ARC-Challenge, split test\) not loaded: "
                                                                r"DatasetNotFoundError")):
        load_benchmark("arc-challenge")
    assert hub.calls == [("allenai/ai2_arc", "ARC-Challenge", "test")]
    with pytest.raises(DataError, match=r"ceval split 'test' is not usable"):  # refused as such, not as no data
        load_benchmark("ceval", "test")
    assert len(hub.calls) == 1
