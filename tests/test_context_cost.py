"""benchmarks/context_cost.py on tiny models: it runs end to end and writes every measurement."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "context_cost.py"


def positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def test_the_context_cost_benchmark_writes_its_ratios(tmp_path):
    spec = importlib.util.spec_from_file_location("context_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "cost.json"
    module.main(["--tiny", "--answer-tokens", "3", "--out", str(out)])
    report = json.loads(out.read_text())
    assert {"date", "command", "device", "threads", "torch", "fuser", "translate_over_prefill", "reuse_over_text_cache",
            "memory"} <= set(report)
    assert "--tiny" in report["command"]
    lengths = report["translate_over_prefill"]
    assert [entry["receiver_tokens"] for entry in lengths] == [16, 48]
    for entry in lengths:
        assert all(positive(entry[key]) for key in ("sharer_tokens", "translate_ms", "place_ms", "sharer_read_ms",
                                                     "receiver_prefill_ms", "translate_over_prefill",
                                                     "translate_and_place_over_prefill", "translated_bytes"))
    reuse = report["reuse_over_text_cache"]
    assert [entry["questions"] for entry in reuse["by_questions"]] == [1, 2]
    for entry in reuse["by_questions"]:
        assert positive(entry["reuse_over_text_cache"]) and positive(entry["further_question_over_text_cache"])
        for method in ("translated", "text_cache", "t2t"):
            assert all(positive(entry[method][key]) for key in ("one_time_ms", "total_ms", "per_question_ms",
                                                                "further_question_ms"))
    memory = report["memory"]
    for run, chunk in (("chunked", 512), ("one_piece", 10 ** 9)):
        assert memory[run]["read_chunk_tokens"] == chunk and positive(memory[run]["translated_mib"])
        assert memory[run]["peak_increase_mib"] >= 0 and positive(memory[run]["after_read_mib"]["VmHWM"])
