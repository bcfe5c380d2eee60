"""Per-item records packed into their run's records.zip (runlog.pack_records): read back as if loose, resumed by
``c2c eval``, byte-reproducible."""

import json

import pytest

from conftest import make_pair
from tiny import tiny

from c2c.evaluation.evaluate import EvalConfig, EvalSetup, run_eval
from c2c.core.runlog import RECORDS_ARCHIVE, pack_records, read_jsonl, write_jsonl


def _run(root, records):
    """A run folder: summary.json and per-item files at the given relative paths."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text("{}")
    for name, rows in records.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(root / name, rows)


def test_packed_records_read_as_loose_ones_each_run_its_own_archive(tmp_path):
    outer = {"arc/receiver.jsonl": [{"id": "a", "correct": True}], "arc/c2c.jsonl": [{"id": "a", "correct": False}]}
    inner = {"squad/receiver.jsonl": [{"id": "q", "f1": 0.5}]}
    _run(tmp_path / "study", outer)
    _run(tmp_path / "study" / "nested", inner)
    (tmp_path / "study" / "inputs").mkdir()
    for other in (tmp_path / "study" / "items.jsonl", tmp_path / "study" / "inputs" / "needles" / "items.jsonl"):
        other.parent.mkdir(parents=True, exist_ok=True)
        other.write_text("{}\n")  # not a run's BENCH/METHOD.jsonl: left alone
    archives = pack_records(tmp_path)
    assert archives == [tmp_path / "study" / RECORDS_ARCHIVE, tmp_path / "study" / "nested" / RECORDS_ARCHIVE]
    assert sorted(p.name for p in tmp_path.rglob("*.jsonl")) == ["items.jsonl", "items.jsonl"]
    for root, records in ((tmp_path / "study", outer), (tmp_path / "study" / "nested", inner)):
        assert all(read_jsonl(root / name) == rows for name, rows in records.items())
    assert read_jsonl(tmp_path / "study" / "arc" / "missing.jsonl") == []
    first = archives[0].read_bytes()
    write_jsonl(tmp_path / "study/arc/c2c.jsonl", [{"id": "a", "correct": True}])  # a loose file replaces its copy
    assert read_jsonl(tmp_path / "study/arc/c2c.jsonl") == [{"id": "a", "correct": True}]
    pack_records(tmp_path)
    assert read_jsonl(tmp_path / "study/arc/c2c.jsonl") == [{"id": "a", "correct": True}]
    write_jsonl(tmp_path / "study/arc/c2c.jsonl", [{"id": "a", "correct": False}])
    pack_records(tmp_path)
    assert archives[0].read_bytes() == first  # the same records give the same bytes


def test_a_damaged_archive_is_refused_with_what_to_do_and_nothing_is_lost(tmp_path):
    _run(tmp_path / "run", {"arc/receiver.jsonl": [{"id": "a"}]})
    pack_records(tmp_path)
    archive = tmp_path / "run" / RECORDS_ARCHIVE
    archive.write_bytes(archive.read_bytes()[:40])  # cut off
    with pytest.raises(ValueError, match="records.zip is damaged .*restore it"):
        read_jsonl(tmp_path / "run" / "arc" / "receiver.jsonl")
    write_jsonl(tmp_path / "run" / "arc" / "c2c.jsonl", [{"id": "b"}])
    with pytest.raises(ValueError, match="is damaged"):
        pack_records(tmp_path)
    assert read_jsonl(tmp_path / "run" / "arc" / "c2c.jsonl") == [{"id": "b"}]  # the loose file is kept


def test_an_evaluation_resumes_from_packed_records_and_keeps_them(tmp_path):
    bench = tmp_path / "tiny_mc.jsonl"
    bench.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Which is number {i}?",
                                         "choices": ["one", "two", "three"], "answer": i % 3}) + "\n"
                             for i in range(4)))
    setup = lambda: EvalSetup(make_pair(chat_template=False), lora_receiver=tiny("llama"))  # noqa: E731
    out = tmp_path / "eval"
    run_eval(EvalConfig([str(bench)], ["receiver"], scoring="cloze", out=str(out), limit=2), setup())
    done = read_jsonl(out / "tiny_mc/receiver.jsonl")
    pack_records(out)
    run_eval(EvalConfig([str(bench)], ["receiver"], scoring="cloze", out=str(out)), setup())
    resumed = read_jsonl(out / "tiny_mc/receiver.jsonl")
    assert resumed[:2] == done and sorted(r["id"] for r in resumed) == ["q0", "q1", "q2", "q3"]


def test_the_pack_script_packs_the_runs_under_the_roots_it_is_given(tmp_path, capsys):
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("pack_records", Path(__file__).parents[1] / "benchmarks" /
                                                  "pack_records.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _run(tmp_path / "run", {"arc/receiver.jsonl": [{"id": "a"}]})
    script.main([str(tmp_path)])
    assert capsys.readouterr().out.strip() == str(tmp_path / "run" / RECORDS_ARCHIVE)
    assert read_jsonl(tmp_path / "run" / "arc" / "receiver.jsonl") == [{"id": "a"}]
