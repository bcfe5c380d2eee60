"""Tests for c2c.data: every schema variant on small fixtures, plus the real shared data."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from conftest import real_data

import c2c.data
from c2c.data import (
    BENCHMARKS,
    DataError,
    MCItem,
    cloze_continuations,
    extract_choice_letter,
    load_benchmark,
    load_chat_jsonl,
    load_instruction_json,
    load_training_data,
    mc_conversations,
    mc_prompt,
    resolve_data_path,
    seeded_sample,
)

ROOT = Path(__file__).resolve().parents[1]


def write(root: Path, rel: str, text: str, encoding: str = "utf-8") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def jsonl(*rows: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)


def arc_original(id_: str, labels: str, key: str, stem: str = "Which one?") -> dict:
    choices = [{"text": f"opt {label}", "label": label, "para": "ignored passage"} for label in labels]
    return {"id": id_, "question": {"stem": stem, "choices": choices}, "answerKey": key}


def item(n: int = 4, answer: int = 1, question: str = "What is 2+2?") -> MCItem:
    return MCItem("q1", question, [f"choice {i}" for i in range(n)], answer)


# --------------------------------------------------------------------------- benchmarks


def test_arc_original_schema_letters_and_numbers(tmp_path):
    rows = jsonl(arc_original("a1", "ABCD", "C"), "", arc_original("a2", "1234", "1"), arc_original("a3", "ABCDE", "E"))
    write(tmp_path, "arc/ARC-Easy/train.jsonl", rows)
    bench = load_benchmark("arc-easy", "train", data_dir=tmp_path)
    assert [(i.id, i.answer, len(i.choices)) for i in bench.items] == [("a1", 2, 4), ("a2", 0, 4), ("a3", 4, 5)]
    assert bench.items[0].choices == ["opt A", "opt B", "opt C", "opt D"]
    assert bench.items[0].question == "Which one?" and bench.items[0].subject is None
    assert bench.report["rows_read"] == 3 and bench.report["kept"] == 3 and bench.report["dropped"] == {}


def test_arc_hf_schema(tmp_path):
    row = {"id": "h1", "question": "Why?", "choices": {"text": ["x", "y", "z"], "label": ["A", "B", "C"]},
           "answerKey": "B", "answer": "y", "response": "extra field"}
    write(tmp_path, "arc/ARC-Challenge/test.jsonl", jsonl(row))
    (got,) = load_benchmark("arc-challenge", "test", data_dir=tmp_path).items
    assert got == MCItem("h1", "Why?", ["x", "y", "z"], 1)


def test_openbookqa_tsv(tmp_path):
    header = "ID\tQuestion Stem\tChoices\tComplete Question\tAnswer Key\n"
    rows = [
        '8-1\t"Quoted" stem\t(A) Deep sea (B) fish (C) Long (D) Far\tignored\tA',
        # a real quirk: a duplicated "(D)" marker; the choices stay positional, the key is unique
        "12-1145\tA learned behavior\t(A) a (B) b (C) c (D) d (D) e\tignored\tB",
    ]
    write(tmp_path, "openbookqa/dev.tsv", header + "\n".join(rows) + "\n")
    first, second = load_benchmark("openbookqa", "validation", data_dir=tmp_path).items
    assert first == MCItem("8-1", '"Quoted" stem', ["Deep sea", "fish", "Long", "Far"], 0)
    assert second.choices == ["a", "b", "c", "d", "e"] and second.answer == 1


def test_openbookqa_ambiguous_key_is_malformed(tmp_path):
    header = "ID\tQuestion Stem\tChoices\tComplete Question\tAnswer Key\n"
    write(tmp_path, "openbookqa/test.tsv", header + "x\tq\t(A) a (B) b (C) c (C) d\tq\tC\n")
    with pytest.raises(DataError, match=r"test\.tsv:2: answer key 'C' matching 2"):
        load_benchmark("openbookqa", "test", data_dir=tmp_path)


MMLU_HEADER = "question,choice0,choice1,choice2,choice3,answer\n"


def test_mmlu_csv(tmp_path):
    write(tmp_path, "mmlu/test/abstract_algebra_test.csv", MMLU_HEADER + '"Multi\nline?",0,4,2,6,1\nNext,a,b,c,d,3\n')
    write(tmp_path, "mmlu/test/anatomy_test.csv", MMLU_HEADER + "Bone?,a,b,c,d,0\n")
    write(tmp_path, "mmlu/dev/anatomy_dev.csv", MMLU_HEADER + "Dev?,a,b,c,d,2\n")
    bench = load_benchmark("mmlu", data_dir=tmp_path)
    assert [(i.id, i.subject, i.answer) for i in bench.items] == [
        ("abstract_algebra/0", "abstract_algebra", 1),
        ("abstract_algebra/1", "abstract_algebra", 3),
        ("anatomy/0", "anatomy", 0),
    ]
    assert bench.items[0].question == "Multi\nline?" and bench.items[0].choices == ["0", "4", "2", "6"]
    assert len(bench.report["files"]) == 2


def test_mmlu_csv_line_numbers_follow_multiline_records(tmp_path):
    write(tmp_path, "mmlu/test/x_test.csv", MMLU_HEADER + '"a\nb",w,x,y,z,0\nbad,w,x,y,z,7\n')
    with pytest.raises(DataError, match=r"x_test\.csv:4: answer '7'; expected a 0-based index 0-3 or a letter A-D"):
        load_benchmark("mmlu", data_dir=tmp_path)


REDUX_HEADER = "question;choices;answer;error_type;source;correct_answer;potential_reason\n"


def redux_rows(tmp_path: Path) -> None:
    """MMLU-Redux fixtures: `;` file, reordered `,` file with extra columns, latin-1 file."""
    semi = [
        "Q ok;['a', 'b', 'c', 'd'];0;OK ;;;",
        "Q fix letter;['a', 'b', 'c', 'd'];0;Wrong Groundtruth;;C;",
        "Q fix index;['a', 'b', 'c', 'd'];0;wrong_groundtruth ;;3;",
        "Q no fix;['a', 'b', 'c', 'd'];1;wrong groundtruth;;;",
        "Q none;['a', 'b', 'c', 'd'];1;No correct Answer;;x;",
        "Q expert;['a', 'b', 'c', 'd'];1;Expert;;;",
        "Q clarity;['a', 'b', 'c', 'd'];2;bad_question_clarity;;;",
        "Q typo;['a', 'b', 'c', 'd'];2;wrong groundtruh;;1;",
        "Q empty type;['a', 'b', 'c', 'd'];3;;;;",
    ]
    write(tmp_path, "mmlu_redux/mmlu_anatomy.csv", REDUX_HEADER + "\n".join(semi) + "\n")
    write(
        tmp_path,
        "mmlu_redux/mmlu_econometrics.csv",
        "question,choices,answer,correct_answer,error_type,source,potential_reason,,\n"
        '"Q, comma","[\'x\', \'y\', \'z\', \'w\']",3,,Multiple Correct Answers,,"0 or 3",,\n',
    )
    write(
        tmp_path,
        "mmlu_redux/mmlu_moral_scenarios.csv",
        "question,choices,answer,error_type,source,correct_answer,potential_reason\n"
        "\"I slapped my sister\xd5s head\",\"['Wrong', 'Not wrong']\",1,ok,,,\n",
        encoding="latin-1",
    )


def test_mmlu_redux_rules_and_formats(tmp_path):
    redux_rows(tmp_path)
    bench = load_benchmark("mmlu-redux", data_dir=tmp_path)
    got = {i.question: i.answer for i in bench.items}
    assert got == {
        "Q ok": 0, "Q fix letter": 2, "Q fix index": 3, "Q clarity": 2, "Q typo": 1, "Q empty type": 3,
        "Q, comma": 3, "I slapped my sister\u00d5s head": 1,
    }
    report = bench.report
    assert report["rows_read"] == 11 and report["kept"] == 8
    assert report["dropped"] == {"wrong_groundtruth_without_fix": 1, "no_correct_answer": 1, "expert": 1}
    assert report["kept"] + sum(report["dropped"].values()) == report["rows_read"]
    assert report["notes"]["answer_fixed"] == 3 and report["notes"]["error_type=wrong_groundtruth"] == 4
    by_question = {i.question: i for i in bench.items}
    comma = by_question["Q, comma"]
    assert comma.choices == ["x", "y", "z", "w"] and comma.subject == "econometrics"
    assert by_question["Q ok"].id == "anatomy/0"


def test_mmlu_redux_unknown_error_type_and_bad_choices(tmp_path):
    path = write(tmp_path, "mmlu_redux/mmlu_x.csv", REDUX_HEADER + "Q;['a', 'b'];0;banana;;;\nQ2;[a, b;0;ok;;;\n")
    with pytest.raises(DataError, match=r"mmlu_x\.csv:2: error_type 'banana'; expected one of ok, wrong_"):
        load_benchmark("mmlu-redux", data_dir=tmp_path)
    report = load_benchmark("mmlu-redux", data_dir=tmp_path, skip_bad=True).report
    assert report["kept"] == 0 and report["dropped"] == {"malformed": 2}
    assert report["bad_rows"][1].startswith(f"{path}:3: choices '[a, b'; expected a Python list literal")


def test_ceval_and_its_test_split(tmp_path):
    header = "id,question,A,B,C,D,answer"
    write(tmp_path, "ceval/val/accountant_val.csv", f"{header}\n0,问题一____。,甲,乙,丙,丁,D\n")
    write(tmp_path, "ceval/dev/accountant_dev.csv", f"{header},explanation\n0,问?,甲,乙,丙,丁,B,解释\n")
    (val,) = load_benchmark("ceval", "validation", data_dir=tmp_path).items
    assert val == MCItem("accountant/0", "问题一____。", ["甲", "乙", "丙", "丁"], 3, "accountant")
    assert load_benchmark("ceval", "dev", data_dir=tmp_path).items[0].answer == 1
    with pytest.raises(DataError, match=r"test split has no answers; use split='val'"):
        load_benchmark("ceval", "test", data_dir=tmp_path)


def test_commonsenseqa_five_choices(tmp_path):
    row = arc_original("c1", "ABCDE", "E", stem="Where?")
    row["question"]["question_concept"] = "place"
    write(tmp_path, "commonsenseqa/dev.jsonl", jsonl(row))
    (got,) = load_benchmark("commonsenseqa", "dev", data_dir=tmp_path).items
    assert got.letters == ["A", "B", "C", "D", "E"] and got.answer == 4


def test_generic_jsonl(tmp_path):
    path = write(tmp_path, "my_bench.jsonl", jsonl(
        {"question": "Q1\u2028", "choices": ["a", "b", "c"], "answer": 2},  # U+2028 is not a line break
        {"question": "Q2", "choices": ["a", "b"], "answer": "b", "id": "x7", "subject": "misc"},
        {"question": "Q3", "choices": ["a", "b", 3], "answer": "A"},
    ))
    bench = load_benchmark(str(path))
    assert [(i.id, i.answer, i.subject) for i in bench.items] == [("my_bench/0", 2, None), ("x7", 1, "misc"),
                                                                  ("my_bench/2", 0, None)]
    assert bench.items[2].choices == ["a", "b", "3"]


@pytest.mark.parametrize(
    "row, message",
    [
        ('{"question": "Q", "choices": ["a", "b"]', "invalid JSON"),
        ({"question": "Q", "choices": ["a", "b"], "answer": 2}, "answer 2; expected a 0-based index 0-1 or a letter"),
        ({"question": "Q", "choices": ["a", "b"], "answer": "C"}, "answer 'C'"),
        ({"question": "Q", "choices": ["a", "b"], "answer": True}, "answer True"),
        ({"question": "Q", "answer": 0}, "no field 'choices'"),
        ({"question": "", "choices": ["a", "b"], "answer": 0}, "question ''"),
        ({"question": "Q", "choices": ["a", ""], "answer": 0}, "an empty choice"),
        ({"question": "Q", "choices": ["a"], "answer": 0}, "a list of 2-26 choices"),
        ({"id": "dup", "question": "Q", "choices": ["a", "b"], "answer": 0}, "duplicate id 'dup'"),
    ],
)
def test_malformed_rows_name_file_and_line(tmp_path, row, message):
    good = {"id": "dup", "question": "Q", "choices": ["a", "b"], "answer": 0}
    path = write(tmp_path, "b.jsonl", jsonl(good, "", row))
    with pytest.raises(DataError) as err:
        load_benchmark(str(path))
    assert f"{path}:3: " in str(err.value) and message in str(err.value) and "--skip-bad" in str(err.value)
    bench = load_benchmark(str(path), skip_bad=True)
    assert [i.id for i in bench.items] == ["dup"]
    assert bench.report["dropped"] == {"malformed": 1} and bench.report["bad_rows"][0].startswith(f"{path}:3: ")


def test_arc_bad_answer_key_and_skip(tmp_path):
    write(tmp_path, "arc/ARC-Easy/dev.jsonl", jsonl(arc_original("a1", "ABCD", "F"), arc_original("a2", "AB", "A")))
    with pytest.raises(DataError, match=r"dev\.jsonl:1: answer key 'F' matching 0 of the labels"):
        load_benchmark("arc-easy", "dev", data_dir=tmp_path)
    assert [i.id for i in load_benchmark("arc-easy", "dev", data_dir=tmp_path, skip_bad=True).items] == ["a2"]


def test_csv_extra_cells_are_malformed(tmp_path):
    write(tmp_path, "mmlu/dev/x_dev.csv", "question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,0,spill\n")
    with pytest.raises(DataError, match=r"x_dev\.csv:2: 1 cell\(s\) beyond the header"):
        load_benchmark("mmlu", "dev", data_dir=tmp_path)


def test_unknown_benchmark():
    with pytest.raises(DataError, match=r"unknown benchmark 'nope'; known: arc-easy, .*\.jsonl"):
        load_benchmark("nope")


def test_missing_split_folder_and_file(tmp_path):
    write(tmp_path, "arc/ARC-Easy/dev.jsonl", jsonl(arc_original("a", "AB", "A")))
    with pytest.raises(DataError, match=r"no files matching .*train\.jsonl; splits present there: dev"):
        load_benchmark("arc-easy", "train", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"arc-easy has no split 'nope'; splits: train, dev, test"):
        load_benchmark("arc-easy", "nope", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"data folder .*mmlu not found.*C2C_DATA_DIR"):
        load_benchmark("mmlu", data_dir=tmp_path)
    with pytest.raises(DataError, match=r"missing\.jsonl not found"):
        load_benchmark(str(tmp_path / "missing.jsonl"))


def test_limit_and_seed_are_deterministic(tmp_path):
    rows = [{"id": f"i{n}", "question": f"Q{n}", "choices": ["a", "b"], "answer": n % 2} for n in range(50)]
    path = str(write(tmp_path, "b.jsonl", jsonl(*rows)))
    ids = lambda **kw: [i.id for i in load_benchmark(path, **kw).items]  # noqa: E731
    first = ids(limit=10, seed=1)
    assert first == ids(limit=10, seed=1) and len(first) == 10
    assert first != ids(limit=10, seed=2)
    assert first == sorted(first, key=lambda s: int(s[1:]))  # original order kept
    assert ids(limit=500) == ids()
    assert set(first) < set(ids(limit=30, seed=1))  # a larger sample extends a smaller one
    assert load_benchmark(path, limit=10).report["kept"] == 50
    with pytest.raises(DataError, match="limit=0"):
        load_benchmark(path, limit=0)


@pytest.mark.parametrize("population", [7, 50, 3000])
def test_seeded_sample_draws_distinct_items_and_grows_by_extension(population):
    for seed in range(3):
        big = seeded_sample(population, population - 2, seed)
        assert len(set(big)) == len(big) and all(0 <= i < population for i in big)
        for size in (1, 5, population // 2):
            assert seeded_sample(population, size, seed) == big[:size]
    assert seeded_sample(population, population + 1, 0) == list(range(population))
    if population < 100:  # every index is about equally likely to be drawn first
        counts = [0] * population
        for seed in range(200 * population):
            counts[seeded_sample(population, 1, seed)[0]] += 1
        assert all(c > 120 for c in counts)


def test_builtin_benchmarks():
    assert set(BENCHMARKS) == {
        "arc-easy", "arc-challenge", "openbookqa", "mmlu", "mmlu-redux", "ceval", "commonsenseqa",
        "arc-easy-evidence", "arc-challenge-evidence", "tipsheets",  # context handoff (see test_context.py)
        "squad",  # free text (see test_free_text.py)
    }


# --------------------------------------------------------------------------- prompts and answers


def test_prompt_formats():
    it = item(n=3)
    assert it.letters == ["A", "B", "C"]
    assert mc_prompt(it, "cloze") == "Question: What is 2+2?\nAnswer:"
    assert mc_prompt(it, "cloze-options") == (
        "Question: What is 2+2?\nA. choice 0\nB. choice 1\nC. choice 2\nAnswer:"
    )
    generate = mc_prompt(it, "generate")
    assert generate.startswith("Accurately answer the following question:\n\nWhat is 2+2?\n\nChoices:\nA. choice")
    assert "C. choice 2\n\nInstructions:\n" in generate and '"The correct answer is A/B/C"' in generate
    assert generate.endswith("\n\nThe correct answer is")
    assert cloze_continuations(it) == [" choice 0", " choice 1", " choice 2"]
    with pytest.raises(ValueError, match="unknown prompt style"):
        mc_prompt(it, "fancy")


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("The correct answer is C.", 4, 2),
        ("answer: (b)", 4, 1),
        ("D", 4, 3),
        (" B.\n", 4, 1),
        ("**Answer:** A", 4, 0),
        ("Option: D", 4, 3),
        ("The answer is E", 5, 4),
        ("The answer is E", 4, None),  # E is not a valid letter for 4 choices
        ("I have no idea.", 4, None),
        ("", 4, None),
        ("The answer is a tricky one", 4, None),  # the article "a" is not an answer
        ("答案是C", 4, 2),
        ("C) 42 is right", 4, 2),
        ("Between A and B, I pick B", 4, 1),
        ("Answer: B. Option A is wrong because of C.", 4, 1),  # explicit pattern wins
    ],
)
def test_extract_choice_letter(text, n, expected):
    assert extract_choice_letter(text, n) == expected


# --------------------------------------------------------------------------- training data


def test_instruction_json(tmp_path, caplog):
    rows = [
        {"instruction": "Say hi", "input": "", "output": "hi"},
        {"instruction": "Translate", "input": "bonjour", "output": "hello"},
        {"instruction": "", "input": "x", "output": "empty instruction"},
        {"instruction": "Empty target", "input": "", "output": "  "},
    ]
    path = write(tmp_path, "alpaca.json", json.dumps(rows))
    convs = load_instruction_json(path)
    assert [c.messages for c in convs] == [
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}],
        [{"role": "user", "content": "Translate\n\nbonjour"}, {"role": "assistant", "content": "hello"}],
    ]
    assert convs[1].source == f"{path}#1" and "skipped 2 empty" in caplog.text
    gpteacher = write(tmp_path, "gpt.json", json.dumps([{"instruction": "I", "input": "", "response": "R"}]))
    assert load_instruction_json(gpteacher)[0].messages[-1] == {"role": "assistant", "content": "R"}


def test_instruction_json_bad_rows(tmp_path):
    path = write(tmp_path, "bad.json", json.dumps([{"instruction": "ok", "output": "ok"}, ["not", "a", "dict"]]))
    with pytest.raises(DataError, match=r"bad\.json#1: a JSON list; expected an object"):
        load_instruction_json(path)
    assert len(load_instruction_json(path, skip_bad=True)) == 1
    with pytest.raises(DataError, match=r"notlist\.json: a JSON dict; expected a list"):
        load_instruction_json(write(tmp_path, "notlist.json", "{}"))
    with pytest.raises(DataError, match=r"broken\.json:2: invalid JSON"):
        load_instruction_json(write(tmp_path, "broken.json", "[\n{oops}]"))


def test_chat_jsonl(tmp_path):
    good = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello"}]}
    last_user = {"messages": [{"role": "user", "content": "Hi"}]}
    bad_role = {"messages": [{"role": "robot", "content": "Hi"}, {"role": "assistant", "content": "x"}]}
    path = write(tmp_path, "chat.jsonl", jsonl(good, last_user, bad_role))
    with pytest.raises(DataError, match=r"chat\.jsonl:2: last message .*; expected a non-empty assistant message"):
        load_chat_jsonl(path)
    convs = load_chat_jsonl(path, skip_bad=True)
    assert len(convs) == 1 and convs[0].messages == good["messages"] and convs[0].source == f"{path}:1"


def test_mc_conversations():
    it = item(answer=2)
    letter, text = mc_conversations([it], "cloze", "both")
    assert letter.messages == [{"role": "user", "content": "Question: What is 2+2?\nAnswer:"},
                               {"role": "assistant", "content": "The correct answer is C."}]
    assert text.messages[-1] == {"role": "assistant", "content": "choice 2"}
    assert len(mc_conversations([it, it], "generate", "letter")) == 2
    with pytest.raises(ValueError, match="unknown target"):
        mc_conversations([it], "cloze", "logits")


def test_load_training_data(tmp_path):
    write(tmp_path, "arc/ARC-Easy/train.jsonl", jsonl(arc_original("a1", "ABCD", "B"), arc_original("a2", "ABD", "D")))
    from_dict = load_training_data(
        {"benchmark": "arc-easy", "split": "train", "prompt_style": "cloze", "target": "text"}, data_dir=tmp_path
    )
    assert [c.messages[-1]["content"] for c in from_dict] == ["opt B", "opt D"]
    from_str = load_training_data("benchmark:arc-easy:train", data_dir=tmp_path)
    assert from_str[0].messages[-1]["content"] == "The correct answer is B."
    assert from_str[0].messages[0]["content"].startswith("Accurately answer")
    chat = write(tmp_path, "c.jsonl", jsonl({"messages": [{"role": "user", "content": "u"},
                                                          {"role": "assistant", "content": "a"}]}))
    assert len(load_training_data(str(chat))) == 1
    inst = write(tmp_path, "i.json", json.dumps([{"instruction": "i", "input": "", "output": "o"}]))
    assert len(load_training_data(str(inst))) == 1
    with pytest.raises(DataError, match=r"no examples in .*empty\.json"):
        load_training_data(str(write(tmp_path, "empty.json", "[]")))
    with pytest.raises(DataError, match=r"nothere\.json not found"):
        load_training_data(str(tmp_path / "nothere.json"))
    with pytest.raises(DataError, match=r"expected keys"):
        load_training_data({"benchmark": "arc-easy", "spilt": "train"})
    with pytest.raises(DataError, match=r"expected a \.json"):
        load_training_data("data.txt")


# --------------------------------------------------------------------------- where data comes from


def instruction(text: str) -> str:
    return json.dumps([{"instruction": text, "input": "", "output": "o"}])


def test_relative_training_paths_resolve_against_the_data_dir_else_the_recipe_folder_never_the_cwd(
    tmp_path, monkeypatch
):
    monkeypatch.delenv("C2C_DATA_DIR", raising=False)
    data, recipes, cwd = tmp_path / "data", tmp_path / "recipes", tmp_path / "cwd"
    write(data, "instruction/a.json", instruction("from the data dir"))
    write(data, "both.json", instruction("both: the data dir"))
    write(recipes, "both.json", instruction("both: the recipe folder"))
    write(recipes, "mine/b.jsonl", jsonl({"messages": [{"role": "user", "content": "from the recipe folder"},
                                                       {"role": "assistant", "content": "a"}]}))
    for rel in ("instruction/a.json", "both.json", "mine/b.jsonl", "only_here.json"):  # decoys
        write(cwd, rel, instruction("from the current directory"))
    monkeypatch.chdir(cwd)
    asked = lambda spec, **kw: load_training_data(spec, **kw)[0].messages[0]["content"]  # noqa: E731

    assert asked("instruction/a.json", data_dir=data) == "from the data dir"
    assert asked("instruction/a.json", data_dir=data, base_dir=recipes) == "from the data dir"
    assert asked("both.json", data_dir=data, base_dir=recipes) == "both: the data dir"  # the data dir first
    assert asked("mine/b.jsonl", data_dir=data, base_dir=recipes) == "from the recipe folder"
    assert asked("both.json", base_dir=recipes) == "both: the recipe folder"
    assert asked("both.json", data_dir="hf", base_dir=recipes) == "both: the recipe folder"  # a hub id: no folder
    monkeypatch.setenv("C2C_DATA_DIR", str(data))  # the data dir when data_dir is not given, read at the call
    assert asked("instruction/a.json") == "from the data dir"
    assert asked("both.json", base_dir=recipes) == "both: the data dir"
    assert resolve_data_path("instruction/a.json") == data / "instruction" / "a.json"
    absolute = write(tmp_path, "abs.json", instruction("absolute"))
    assert asked(str(absolute), data_dir=data, base_dir=recipes) == "absolute"

    with pytest.raises(DataError, match=r"only_here\.json not found: .*never the current directory; looked at "
                                        r".*data/only_here\.json \(the data dir, from C2C_DATA_DIR=.*\); "
                                        r".*recipes/only_here\.json \(the recipe's folder\)"):
        load_training_data("only_here.json", base_dir=recipes)
    monkeypatch.delenv("C2C_DATA_DIR")
    with pytest.raises(DataError, match=r"instruction/a\.json not found: .*never the current directory; "
                                        r"neither was given"):
        load_training_data("instruction/a.json")


def test_no_library_default_points_outside_the_repository(monkeypatch):
    """Without data_dir and C2C_DATA_DIR a built-in benchmark goes to the hub (here: no `datasets`), and fails
    with the three-way error, even on a machine where ../shared/data exists beside the repository."""
    monkeypatch.delenv("C2C_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` raises ImportError
    three_ways = (r": no data\. Tried, in order: data_dir= / --data-dir \(not given\); the C2C_DATA_DIR environment "
                  r"variable \(not set\); the Hugging Face hub .*Give the data one of three ways: --data-dir DIR")
    for name, spec in BENCHMARKS.items():
        try:
            bench = load_benchmark(name, spec.splits[0])
        except DataError as e:
            assert re.match(re.escape(name) + three_ways, str(e)), str(e)
            continue
        for source in bench.report["files"]:  # found without a data dir: only what the project holds or makes
            assert not Path(source).is_absolute() or ROOT in Path(source).resolve().parents, (name, source)
    with pytest.raises(DataError, match=r"arc-easy: no data\. Tried"):
        load_training_data({"benchmark": "arc-easy"})
    for value in vars(c2c.data).values():  # no module-level path at all, inside the repository or out
        assert not isinstance(value, Path), value
    assert not hasattr(c2c.data, "DEFAULT_DATA_DIR")


def test_demo_questions_ship_with_their_source_and_licence():
    folder = ROOT / "examples" / "data"
    bench = load_benchmark(str(folder / "arc_challenge_demo.jsonl"))
    rows = (folder / "arc_challenge_demo.jsonl").read_text().splitlines()  # every shipped question is kept
    assert len(bench.items) == bench.report["rows_read"] == len(rows) == 50 and bench.report["dropped"] == {}
    note = (folder / "README.md").read_text()
    for words in ("AI2 Reasoning Challenge", "allenai", "https://allenai.org/data/arc", "CC BY-SA 4.0",
                  "make_arc_challenge_demo.py"):
        assert words in note, words
    real_data("arc/ARC-Challenge/test.jsonl")  # with the real data: the same questions the demo asked before
    assert bench.items[:5] == load_benchmark("arc-challenge", "test", limit=5, seed=1).items
    sample = load_benchmark("arc-challenge", "test", limit=50, seed=1).items
    assert sorted(i.id for i in bench.items) == sorted(i.id for i in sample)
    assert {i.id: i for i in bench.items} == {i.id: i for i in sample}


# --------------------------------------------------------------------------- real shared data

REAL_COUNTS = [
    ("arc-easy", "train", 2251), ("arc-easy", "dev", 570), ("arc-easy", "test", 2376),
    ("arc-challenge", "train", 1119), ("arc-challenge", "dev", 299), ("arc-challenge", "test", 1172),
    ("openbookqa", "train", 4957), ("openbookqa", "dev", 500), ("openbookqa", "test", 500),
    ("mmlu", "dev", 285), ("mmlu", "test", 14042),
    ("ceval", "dev", 260), ("ceval", "val", 1346),
    ("commonsenseqa", "train", 9741), ("commonsenseqa", "dev", 1221),
]


def real(name: str) -> None:
    real_data(BENCHMARKS[name].folder)  # skips, with the reason, without the real data


@pytest.mark.parametrize("name, split, count", REAL_COUNTS)
def test_real_benchmark_counts(name, split, count):
    real(name)
    bench = load_benchmark(name, split)
    assert bench.report["rows_read"] == count and bench.report["kept"] == count and bench.report["dropped"] == {}
    assert len({i.id for i in bench.items}) == count
    if name in ("mmlu", "ceval"):
        assert len(bench.report["files"]) == (57 if name == "mmlu" else 52)
        assert all(i.subject for i in bench.items)


def test_real_mmlu_redux():
    real("mmlu-redux")
    report = load_benchmark("mmlu-redux").report
    print({k: report[k] for k in ("rows_read", "kept", "dropped")})
    assert len(report["files"]) == 57 and report["rows_read"] == 5700
    assert report["kept"] + sum(report["dropped"].values()) == report["rows_read"]
    # measured on the shared copy: 35 no_correct_answer, 32 expert, 5 wrong_groundtruth rows without a fix
    assert report["dropped"] == {"no_correct_answer": 35, "expert": 32, "wrong_groundtruth_without_fix": 5}
    assert report["kept"] == 5628 and report["notes"]["answer_fixed"] == 102
