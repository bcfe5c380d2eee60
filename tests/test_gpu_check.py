"""benchmarks/gpu_check.py, the prepared GPU check (issue 33.2), runs here on tiny shapes on the CPU, so that it
cannot rot before a GPU runs it; its model configs are the real models' shapes."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from c2c.core.models import ModelShape

ROOT = Path(__file__).resolve().parents[1]


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_check_runs_on_tiny_shapes_and_its_correctness_checks_pass(tmp_path):
    out = tmp_path / "gpu_check.json"
    assert gpu_check().main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["correctness_passed"] and result["device"] == "cpu" and result["tiny"]
    assert {"torch", "transformers", "peft", "safetensors"} <= set(result["versions"])
    assert set(result["pairs"]) == {"qwen3-0.6b+qwen2.5-0.5b", "smollm2-135m+gemma3-270m"}
    for name, pair in result["pairs"].items():
        assert not any("error" in section for section in pair.values() if isinstance(section, dict)), name
        checks = pair["correctness"]
        assert checks["passed"] and checks["fusion_off_equals_receiver_alone"] and checks["shut_gates_equal_fusion_off"]
        assert checks["fusion_changes_the_logits"] > 0 and checks["train_grads_finite"]
        assert checks["translator_cpu_equals_device"] and checks["bf16_within_tolerance"]
        prefill = pair["prefill"]["entries"]
        assert len(prefill) == 6 and all(e["c2c_ms"] > 0 and e["fused_tokens"] > 0 for e in prefill)
        assert "tokens" in pair["prefill"]["host_syncs"]
        training = pair["training"]
        assert training["step_tokens_per_s"] > 0 and training["floor_tokens_per_s"] > 0 and training["grad_norms_finite"]
        assert {(e["batch"], e["fuse"]) for e in pair["decode"]["entries"]} == {(1, False), (1, True), (4, False),
                                                                               (4, True)}
        assert pair["translation"]["translate_ms"] > 0 and pair["translation"]["context_sharer_tokens"] > 8
    assert pair["token_alignment"] == "offsets" and result["pairs"]["qwen3-0.6b+qwen2.5-0.5b"]["token_alignment"] \
        == "identity"  # the Qwen pair shares its vocabulary


@pytest.mark.parametrize("name,shape,window", [
    ("qwen3-0.6b", ("qwen3", 28, 8, 128, 151936), None),
    ("qwen2.5-0.5b-instruct", ("qwen2", 24, 2, 64, 151936), None),
    ("smollm2-135m-instruct", ("llama", 30, 3, 64, 49152), None),
    ("gemma-3-270m", ("gemma3_text", 18, 1, 256, 262144), 512),
])
def test_the_shipped_configs_have_the_real_models_shapes(name, shape, window):
    values = json.loads((ROOT / "benchmarks" / "configs" / f"{name}.json").read_text())
    values = {k: v for k, v in values.items() if k not in ("architectures", "torch_dtype", "transformers_version")}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**values))
    assert ModelShape.of(model) == ModelShape(*shape)
    config = model.config.get_text_config(decoder=True)
    layer_types = getattr(config, "layer_types", None) or []
    assert (config.sliding_window if "sliding_attention" in layer_types else None) == window
