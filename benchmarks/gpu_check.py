"""One prepared check of c2c on a GPU, at the paper's model sizes, with nothing downloaded (issue 33.2).

Two pairs are built with random weights from the configs in ``benchmarks/configs/`` (the models' own Hugging Face
``config.json``): the paper's, receiver Qwen3-0.6B with sharer Qwen2.5-0.5B-Instruct and a fuser of the reference's
sizes (477,848,056 parameters), and c2c's default pair's shapes, receiver SmolLM2-135M-Instruct with sharer
Gemma-3-270m and the default fuser. Tokenizers are small byte-level BPEs trained here in a second (the models' ids
are only ever small ones). Every fuser gate is open and the fusers' output layers are random (not zero), so fusion
does its full work; every number goes through the library's own calls (``C2CModel.create``, ``prepare``,
``prefill``, ``generate``, ``objectives.objective_sum``).

Measured per pair, in ``--dtype`` (bfloat16) on ``--device`` (cuda):

- correctness: fusion off is the receiver alone exactly (logits and greedy tokens), and so is fusion on with every
  gate shut; fused logits in bf16 within tolerance of float32 (same weights); a training step's gradients finite;
  the context translator's output on the device equal to the CPU's within tolerance (float32 both);
- prefill of 128, 512 and 2,048 tokens: the receiver alone, the sharer alone, C2C (sharer + fusion + receiver),
  and fusion alone (the fused prefill with the sharer's K/V kept, less the receiver's); the host-device syncs of
  one fused prefill are counted on CUDA (``torch.cuda.set_sync_debug_mode``);
- a training step (batch 8 x 512 tokens, the ``tokens`` objective) in tokens/s against the floor: the receiver's
  forward + backward plus the sharer's forward over the same batch; peak memory of each;
- decoding after a 128-token prompt, fused and fusion off, at batch 1 and 32 (decode-only tokens/s: a run of
  64 new tokens less a run of 1, and end to end);
- a 2,048-token context translated into receiver K/V, against the receiver prefilling it as text.

    python benchmarks/gpu_check.py                         # cuda, bfloat16 -> results/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --tiny      # the same code on tiny shapes, seconds (the tests run it)

Needs torch, transformers (>= 5), peft and safetensors, and this repository (run from its root; no install needed).
The exit status is 1 when a correctness check fails or a section raises (its traceback is in the JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib.metadata
import json
import math
import platform
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from tokenizers.processors import TemplateProcessing  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from c2c.runtime import passes  # noqa: E402
from c2c.core.tensors import position_ids  # noqa: E402
from c2c.inputs.context import with_context  # noqa: E402
from c2c.model.config import FuserConfig  # noqa: E402
from c2c.runtime.sharers import SharerRun  # noqa: E402
from c2c.core.models import LoadedModel  # noqa: E402
from c2c.training.objectives import MicroBatch, objective_sum  # noqa: E402
from c2c.model.pair import C2CModel  # noqa: E402
from c2c.training.train import parameter_groups  # noqa: E402
from c2c.translator.config import TranslatorConfig  # noqa: E402

CONFIGS = ROOT / "benchmarks" / "configs"
PAIRS = {  # name: (receiver config, sharer config, fuser, token alignment)
    "qwen3-0.6b+qwen2.5-0.5b": ("qwen3-0.6b", "qwen2.5-0.5b-instruct",
                                dict(hidden_size=1024, intermediate_size=1024, num_layers=3), "receiver_ids"),
    "smollm2-135m+gemma3-270m": ("smollm2-135m-instruct", "gemma-3-270m", {}, "offsets"),
}
TINY = {  # model_type: config overrides that shrink a model, its architecture kept
    "qwen3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_window_layers=4),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_window_layers=3),
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8),
    "gemma3_text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                        layer_types=["sliding_attention", "sliding_attention", "full_attention"]),
}
SIZES = {  # what each measurement runs on: full (the sizes) and tiny (the test suite's seconds)
    "full": dict(prefill_tokens=[128, 512, 2048], prefill_batches=[1, 8], train_batch=8, train_tokens=512,
                 train_response=128, decode_prompt=128, decode_new=64, decode_batches=[1, 32], context_tokens=2048,
                 repeats=3, fuser={}),
    "tiny": dict(prefill_tokens=[16, 32, 64], prefill_batches=[1, 2], train_batch=2, train_tokens=32,
                 train_response=8, decode_prompt=16, decode_new=4, decode_batches=[1, 4], context_tokens=48,
                 repeats=1, fuser=dict(hidden_size=16, intermediate_size=16)),
}
# bf16 against float32 on the same weights: root-mean-square logit error over the logits' spread (the default pair's
# shapes on the CPU gave 0.036; the same receiver in two passes instead of one, 0.018), and the cosine between what
# fusion changes in the logits in each dtype (0.996). The translator in float32 on the device against the CPU.
TOLERANCE = {"bf16_logits_rel_rms": 0.1, "bf16_fusion_shift_cosine": 0.9, "translator_rel_max": 1e-3}
WORDS = ("the cell uses light energy to split water and make sugar while carbon dioxide enters through small "
         "pores in the leaf and oxygen leaves as a product of the reaction").split()
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = [" ".join(WORDS), "Question: What is the capital of France?\nAnswer: Paris.", "Water boils at 100 degrees."]


# ----------------------------------------------------------------------------------------------- models
def chatml_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with a ChatML chat template (as Qwen's and SmolLM2's), trained on a few sentences."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>", chat_template=CHATML)


def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """Sentencepiece-like ('▁' for spaces, a BOS, no chat template), as Gemma's: another vocabulary."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tokenizer.decoder = decoders.Replace("▁", " ")
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                                             special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"]))
    tokenizer.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>")


def build_model(name: str, tokenizer, device: torch.device, tiny: bool, seed: int) -> LoadedModel:
    """A float32 model of ``benchmarks/configs/{name}.json`` (shrunk when ``tiny``) with random weights."""
    values = json.loads((CONFIGS / f"{name}.json").read_text())
    values = {k: v for k, v in values.items() if k not in ("architectures", "torch_dtype", "dtype",
                                                            "transformers_version")}
    if tiny:
        values.update(TINY[values["model_type"]], vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = AutoConfig.for_model(**values)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config).float()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval().requires_grad_(False)
    return LoadedModel(name, model, tokenizer)


def in_dtype(model: LoadedModel, dtype: torch.dtype, device: torch.device | str | None = None) -> LoadedModel:
    copied = copy.deepcopy(model.model).to(dtype)
    return LoadedModel(model.name, copied.to(device) if device is not None else copied, model.tokenizer)


def build_pairs(name: str, device: torch.device, dtype: torch.dtype, tiny: bool) -> SimpleNamespace:
    """The pair in float32 and in ``dtype``: the same models' weights, the same fuser weights, every gate open."""
    receiver_name, sharer_name, fuser_sizes, alignment = PAIRS[name]
    receiver_tokenizer = chatml_tokenizer()
    sharer_tokenizer = receiver_tokenizer if alignment == "receiver_ids" else metaspace_tokenizer()
    receiver = build_model(receiver_name, receiver_tokenizer, device, tiny, seed=1)
    sharer = build_model(sharer_name, sharer_tokenizer, device, tiny, seed=2)
    sizes = SIZES["tiny" if tiny else "full"]["fuser"] or fuser_sizes
    fuser = FuserConfig(**sizes, zero_init=False)
    torch.manual_seed(3)
    full = C2CModel.create(receiver, [sharer], fuser, token_alignment=alignment)
    with torch.no_grad():
        for layer in full.layer_fusers():
            layer.gate_logits.fill_(1.0)
    half = C2CModel(in_dtype(receiver, dtype), [in_dtype(sharer, dtype)], full.config)
    half.load_state_dict(full.state_dict())
    return SimpleNamespace(name=name, full=full.eval(), half=half.eval(), device=device, dtype=dtype,
                           alignment=full.config.sharers[0].token_alignment,
                           fuser_parameters=sum(p.numel() for p in full.fusers.parameters()))


# ----------------------------------------------------------------------------------------------- helpers
def text_of(tokens: int, count, seed: int = 0) -> str:
    """The longest run of words (from ``seed``) whose ``count(text)`` is at most ``tokens``."""
    words = [WORDS[(seed + i) % len(WORDS)] for i in range(tokens * 2)]
    low, high = 1, len(words)
    while low < high:
        middle = (low + high + 1) // 2
        if count(" ".join(words[:middle])) <= tokens:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low])


def prompt_of(pair: C2CModel, tokens: int, seed: int = 0) -> str:
    """A prompt whose receiver rendering (chat template included) is at most ``tokens`` tokens."""
    return text_of(tokens, lambda text: len(pair.render_prompt(text).ids), seed)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, function, repeats: int) -> float:
    """Median milliseconds of ``function()`` after one warm-up, the device synchronised around each call."""
    function()
    times = []
    for _ in range(repeats):
        synchronize(device)
        started = time.perf_counter()
        function()
        synchronize(device)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def peak_memory(device: torch.device, function) -> dict | None:
    """GiB allocated on the GPU before ``function()`` and at its peak (None on the CPU)."""
    if device.type != "cuda":
        function()
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    function()
    synchronize(device)
    return {"before_gib": round(before / 2**30, 3), "peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}


@contextlib.contextmanager
def counting_syncs(device: torch.device):
    """Counts the synchronising CUDA calls inside the block (``torch.cuda.set_sync_debug_mode``); None on a CPU."""
    found = SimpleNamespace(count=None)
    if device.type != "cuda":
        yield found
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield found
        finally:
            torch.cuda.set_sync_debug_mode("default")
    found.count = sum("synchroniz" in str(w.message) for w in caught)


def last_logits(pair: C2CModel, batch, fuse: bool = True, cache=None) -> torch.Tensor:
    """The receiver's float32 logits after each prompt's last token, from ``pair.prefill`` (or ``cache``)."""
    cache = pair.prefill(batch, fuse=fuse) if cache is None else cache
    last = slice(batch.prompt_length - 1, batch.prompt_length)
    output = pair.receiver.model(input_ids=batch.input_ids[:, last], attention_mask=batch.attention_mask,
                                 position_ids=position_ids(batch.attention_mask)[:, last], cache=cache)
    return output.logits[:, -1].float()


def set_gates(pair: C2CModel, value: float) -> None:
    with torch.no_grad():
        for layer in pair.layer_fusers():
            layer.gate_logits.fill_(value)


def relative(a: torch.Tensor, b: torch.Tensor) -> dict:
    """How far ``a`` is from the reference ``b``: max and root-mean-square differences over ``b``'s spread."""
    a, b = a.double(), b.double()
    spread = (b - b.mean()).pow(2).mean().sqrt().clamp(min=1e-12)
    return {"rel_max": float((a - b).abs().max() / spread), "rel_rms": float((a - b).pow(2).mean().sqrt() / spread)}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().flatten(), b.double().flatten(), dim=0))


def training_batch(pair: C2CModel, size: dict, seed: int = 0):
    """``train_batch`` conversations of about ``train_tokens`` receiver tokens each, ``train_response`` of them the
    response, prepared as ``c2c train`` prepares them (``objectives.prepare`` for the tokens objective)."""
    responses = [text_of(size["train_response"], lambda text: len(pair.response_ids("Q", text)), seed + 7 + row)
                 for row in range(size["train_batch"])]
    prompts = [prompt_of(pair, size["train_tokens"] - len(pair.response_ids("Q", r)), seed + row)
               for row, r in enumerate(responses)]
    return pair.prepare(prompts, responses).to(pair.device)


def train_step(pair: C2CModel, batch, optimizer) -> float:
    """One optimizer step as ``c2c train`` takes it (objective_sum / units, backward, clip, step); the sharers run
    inside it. Returns the gradient norm."""
    pair.sharer_cache_provider = SharerRun()
    micro = MicroBatch(batch)
    loss = objective_sum(pair, micro, fuse=True) / micro.units
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_([p for p in pair.fusers.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def floor_step(pair: C2CModel, batch) -> None:
    """The floor of a C2C step: the receiver's forward + backward over the whole rows (gradient to its input
    embeddings: the frozen weights take none) and the sharer's forward over its input."""
    receiver = pair.receiver.model
    embeddings = receiver.get_input_embeddings()(batch.input_ids).detach().requires_grad_(True)
    logits = receiver(inputs_embeds=embeddings, attention_mask=batch.attention_mask,
                      position_ids=position_ids(batch.attention_mask)).logits
    torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                      batch.labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum").backward()
    with torch.no_grad():
        pair.sharer_kv(0, batch.sharer_ids[0], batch.sharer_mask[0])


# ----------------------------------------------------------------------------------------------- measurements
def correctness(pairs: SimpleNamespace, size: dict) -> dict:
    pair, full, device = pairs.half, pairs.full, pairs.device
    prompts = [prompt_of(pair, 24, seed=0), prompt_of(pair, 40, seed=5)]  # two lengths: left padding in one row
    out = {}
    with torch.no_grad():
        batch = pair.prepare(prompts).to(device)
        # fusion off is the receiver alone: the same logits and greedy tokens as the receiver over its own cache
        alone_cache = passes.prompt_cache(pair.receiver.model, batch.input_ids, batch.attention_mask)
        alone = last_logits(pair, batch, cache=alone_cache)
        off = last_logits(pair, batch, fuse=False)
        fused = last_logits(pair, batch)
        new = 8
        alone_tokens = passes.decode(pair.receiver.model, pair.receiver.tokenizer, batch.input_ids,
                                      batch.attention_mask, passes.prompt_cache(pair.receiver.model, batch.input_ids,
                                                                                 batch.attention_mask), new,
                                      min_new_tokens=new)
        alone_text = pair.receiver.tokenizer.batch_decode(alone_tokens, skip_special_tokens=True)
        off_text = pair.generate(prompts, max_new_tokens=new, fuse=False, min_new_tokens=new)
        set_gates(pair, -1.0)
        shut = last_logits(pair, batch)
        shut_text = pair.generate(prompts, max_new_tokens=new, min_new_tokens=new)
        set_gates(pair, 1.0)
        stock = pair.receiver.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                    position_ids=position_ids(batch.attention_mask)).logits[:, -1].float()
        out["fusion_off_equals_receiver_alone"] = bool(torch.equal(off, alone)) and off_text == alone_text
        out["shut_gates_equal_fusion_off"] = bool(torch.equal(shut, off)) and shut_text == off_text
        out["fusion_changes_the_logits"] = float((fused - off).abs().max())
        out["fusion_off_vs_one_pass_receiver"] = relative(off, stock)  # float rounding of two passes vs one
        # bf16 vs float32: the same weights, fused logits and what fusion changes in them
        batch32 = full.prepare(prompts).to(device)
        fused32, off32 = last_logits(full, batch32), last_logits(full, batch32, fuse=False)
        out["bf16_vs_fp32_fused_logits"] = relative(fused, fused32)
        out["bf16_vs_fp32_fusion_shift_cosine"] = cosine(fused - off, fused32 - off32)
        out["bf16_vs_fp32_top1_agreement"] = float((fused.argmax(-1) == fused32.argmax(-1)).float().mean())
        out["bf16_within_tolerance"] = (out["bf16_vs_fp32_fused_logits"]["rel_rms"] <= TOLERANCE["bf16_logits_rel_rms"]
                                        and out["bf16_vs_fp32_fusion_shift_cosine"]
                                        >= TOLERANCE["bf16_fusion_shift_cosine"])
    # a training step: gradients reach every fuser, finite, float32
    pair.train()
    try:
        small = dict(size, train_batch=2, train_tokens=min(size["train_tokens"], 64), train_response=8)
        micro = MicroBatch(training_batch(pair, small))
        pair.sharer_cache_provider = SharerRun()
        (objective_sum(pair, micro, fuse=True) / micro.units).backward()
        grads = [p.grad for p in pair.fusers.parameters() if p.requires_grad]
        out["train_grads_present"] = sum(g is not None for g in grads) / len(grads)
        out["train_grads_finite"] = all(g is None or bool(torch.isfinite(g).all()) for g in grads) and \
            out["train_grads_present"] > 0.5
        out["train_grads_float32"] = all(g is None or g.dtype == torch.float32 for g in grads)
    finally:
        pair.zero_grad(set_to_none=True)
        pair.eval()
    out.update(translator_on_cpu_and_device(pairs, size))
    out["fusion_acts"] = out["fusion_changes_the_logits"] > 0  # else the checks above would be vacuous
    out["passed"] = all(out[k] for k in ("fusion_off_equals_receiver_alone", "shut_gates_equal_fusion_off", "fusion_acts",
                                         "bf16_within_tolerance", "train_grads_finite", "train_grads_float32",
                                         "translator_cpu_equals_device"))
    return out


def translator_pair(pair: C2CModel, seed: int = 4) -> C2CModel:
    """A context translator on ``pair``'s models with random maps (an unfitted one writes zeros)."""
    torch.manual_seed(seed)
    translating = C2CModel.create(pair.receiver, pair.sharers, fuser=None, token_alignment="offsets",
                                  translator=TranslatorConfig())
    with torch.no_grad():
        for linear in translating.translators[0].maps:
            linear.weight.normal_(0, linear.weight.shape[1] ** -0.5)
    translating.context_memo.max_bytes = 0  # every pass reads its context afresh: the timings measure the reading
    return translating.eval()


def translated(pair: C2CModel, question: str, context: str) -> list:
    batch = pair.prepare([question], sharer_contexts=[context]).to(pair.device)
    section = batch.sections[0]
    positions = position_ids(batch.attention_mask)[:, section.start:section.end]
    with torch.no_grad():
        return pair.translated_kv(0, section, positions)


def translator_on_cpu_and_device(pairs: SimpleNamespace, size: dict) -> dict:
    device_pair = translator_pair(pairs.full)
    cpu_pair = C2CModel(in_dtype(pairs.full.receiver, torch.float32, "cpu"),
                        [in_dtype(pairs.full.sharers[0], torch.float32, "cpu")], device_pair.config)
    cpu_pair.load_state_dict({k: v.cpu() for k, v in device_pair.state_dict().items()})
    half_pair = C2CModel(pairs.half.receiver, pairs.half.sharers, device_pair.config)
    half_pair.load_state_dict(device_pair.state_dict())
    question, context = "Question: What leaves the leaf?\nAnswer:", text_of(32, lambda t: len(t.split()))
    on_cpu = torch.cat([torch.cat(kv, 1) for kv in translated(cpu_pair.eval(), question, context)], 1)
    on_device = torch.cat([torch.cat(kv, 1) for kv in translated(device_pair, question, context)], 1).cpu()
    in_half = torch.cat([torch.cat(kv, 1) for kv in translated(half_pair.eval(), question, context)], 1).float().cpu()
    float32 = relative(on_device, on_cpu)
    return {"translator_fp32_device_vs_cpu": float32, "translator_bf16_device_vs_fp32_cpu": relative(in_half, on_cpu),
            "translator_cpu_equals_device": float32["rel_max"] <= TOLERANCE["translator_rel_max"]}


def prefill(pairs: SimpleNamespace, size: dict) -> dict:
    pair, device, repeats = pairs.half, pairs.device, size["repeats"]
    entries = []
    with torch.no_grad():
        for tokens in size["prefill_tokens"]:
            for batch_size in size["prefill_batches"]:
                batch = pair.prepare([prompt_of(pair, tokens, seed) for seed in range(batch_size)]).to(device)

                def fused_fresh():
                    pair.sharer_cache_provider = SharerRun()  # nothing kept: the sharer runs inside
                    pair.prefill(batch)

                receiver_ms = timed(device, lambda: pair.prefill(batch, fuse=False), repeats)
                sharer_ms = timed(device, lambda: pair.sharer_kv(0, batch.sharer_ids[0], batch.sharer_mask[0]),
                                  repeats)
                c2c_ms = timed(device, fused_fresh, repeats)
                pair.sharer_caches(batch)  # kept: the fused prefill below runs the receiver and the fusers only
                fused_kept_ms = timed(device, lambda: pair.prefill(batch), repeats)
                entry = {"tokens": int(batch.input_ids.shape[1]), "batch": batch_size,
                         "sharer_tokens": int(batch.sharer_ids[0].shape[1]),
                         "fused_tokens": int((batch.positions[0] >= 0).sum()),
                         "receiver_ms": round(receiver_ms, 2), "sharer_ms": round(sharer_ms, 2),
                         "c2c_ms": round(c2c_ms, 2), "fusion_ms": round(fused_kept_ms - receiver_ms, 2)}
                entry["c2c_over_receiver"] = round(c2c_ms / receiver_ms, 3)
                entry["c2c_over_two_passes"] = round(c2c_ms / (receiver_ms + sharer_ms), 3)
                entry["fuser_share"] = round((fused_kept_ms - receiver_ms) / c2c_ms, 4)
                entries.append(entry)
                print(pairs.name, "prefill", entry, flush=True)
    return {"entries": entries, "host_syncs": host_syncs(pair, size),
            "c2c_over_two_passes_max": max(e["c2c_over_two_passes"] for e in entries),
            "fuser_share_max": max(e["fuser_share"] for e in entries),
            "target": "c2c_ms <= 1.3 x (receiver_ms + sharer_ms)"}


def host_syncs(pair: C2CModel, size: dict) -> dict:
    """How many times one prefill makes the host wait for the GPU (None on a CPU); an error is recorded, not raised."""
    try:
        with torch.no_grad():
            batch = pair.prepare([prompt_of(pair, size["prefill_tokens"][1])]).to(pair.device)
            pair.sharer_caches(batch)
            with counting_syncs(pair.device) as receiver:
                pair.prefill(batch, fuse=False)
            with counting_syncs(pair.device) as fused:
                pair.prefill(batch)
            with counting_syncs(pair.device) as kept:
                pair.sharer_caches(batch)
        return {"tokens": int(batch.input_ids.shape[1]), "receiver_prefill": receiver.count,
                "fused_prefill_sharer_kept": fused.count, "sharer_caches_of_the_last_batch": kept.count}
    except Exception:  # noqa: BLE001
        return {"error": traceback.format_exc()}


def training(pairs: SimpleNamespace, size: dict) -> dict:
    pair, device, repeats = pairs.half, pairs.device, size["repeats"]
    batch = training_batch(pair, size)
    tokens = int(batch.attention_mask.sum())
    pair.train()
    optimizer = torch.optim.AdamW(parameter_groups(pair.fusers, SimpleNamespace(lr=1e-4, weight_decay=0.0,
                                                                               gate_lr=1e-2)))
    norms = []
    try:
        step_ms = timed(device, lambda: norms.append(train_step(pair, batch, optimizer)), repeats)
        step_peak = peak_memory(device, lambda: train_step(pair, batch, optimizer))
        floor_ms = timed(device, lambda: floor_step(pair, batch), repeats)
        floor_peak = peak_memory(device, lambda: floor_step(pair, batch))
    finally:
        optimizer.zero_grad(set_to_none=True)
        pair.eval()
        del optimizer
    result = {"batch": size["train_batch"], "columns": int(batch.input_ids.shape[1]), "tokens": tokens,
              "response_tokens": int((batch.labels != -100).sum()), "step_ms": round(step_ms, 2),
              "floor_ms": round(floor_ms, 2), "step_tokens_per_s": round(tokens / step_ms * 1000, 1),
              "floor_tokens_per_s": round(tokens / floor_ms * 1000, 1), "step_memory": step_peak,
              "floor_memory": floor_peak, "grad_norms_finite": all(math.isfinite(float(n)) for n in norms),
              "target": "step_tokens_per_s >= 0.8 x floor_tokens_per_s"}
    result["step_over_floor_throughput"] = round(result["step_tokens_per_s"] / result["floor_tokens_per_s"], 3)
    print(pairs.name, "train", result, flush=True)
    return result


def decoding(pairs: SimpleNamespace, size: dict) -> dict:
    pair, device, repeats, new = pairs.half, pairs.device, size["repeats"], size["decode_new"]
    entries = []
    for batch_size in size["decode_batches"]:
        prompts = [prompt_of(pair, size["decode_prompt"], seed) for seed in range(batch_size)]
        batch = pair.prepare(prompts, max_new_tokens=new)  # on the CPU: moved (and the sharer run) in every call
        for fuse in (False, True):
            def run(tokens: int):
                pair.sharer_cache_provider = SharerRun()
                pair.generate(prompts, max_new_tokens=tokens, min_new_tokens=tokens, fuse=fuse, prepared=batch)

            whole_ms = timed(device, lambda: run(new), repeats)
            first_ms = timed(device, lambda: run(1), repeats)
            entry = {"batch": batch_size, "fuse": fuse, "prompt_tokens": int(batch.input_ids.shape[1]),
                     "new_tokens": new, "whole_ms": round(whole_ms, 2), "prefill_and_first_ms": round(first_ms, 2),
                     "decode_tokens_per_s": round(batch_size * (new - 1) / max(whole_ms - first_ms, 1e-6) * 1000, 1),
                     "end_to_end_tokens_per_s": round(batch_size * new / whole_ms * 1000, 1)}
            entries.append(entry)
            print(pairs.name, "decode", entry, flush=True)
    ratios = {}
    for batch_size in size["decode_batches"]:
        on, off = ([e for e in entries if e["batch"] == batch_size and e["fuse"] == f][0] for f in (True, False))
        ratios[str(batch_size)] = round(on["decode_tokens_per_s"] / off["decode_tokens_per_s"], 3)
    return {"entries": entries, "fused_over_receiver_decode": ratios}


def translation(pairs: SimpleNamespace, size: dict) -> dict:
    pair, device, repeats = translator_pair(pairs.half), pairs.device, size["repeats"]
    context = text_of(size["context_tokens"], lambda text: len(pair.receiver.tokenizer(text)["input_ids"]))
    question = "Question: What leaves the leaf?\nAnswer:"
    sharer_tokens = len(pair.sharers[0].tokenizer(context)["input_ids"])
    with torch.no_grad():
        batch = pair.prepare([question], sharer_contexts=[context]).to(device)
        section = batch.sections[0]
        positions = position_ids(batch.attention_mask)[:, section.start:section.end]
        as_text = pair.prepare([with_context(question, context)]).to(device)
        context_only = pair.prepare([context]).to(device)
        translate_ms = timed(device, lambda: pair.translated_kv(0, section, positions), repeats)
        translated_prefill_ms = timed(device, lambda: pair.prefill(batch), repeats)
        text_prefill_ms = timed(device, lambda: pair.prefill(as_text, fuse=False), repeats)
        context_prefill_ms = timed(device, lambda: pair.prefill(context_only, fuse=False), repeats)
    result = {"context_receiver_tokens": len(pair.receiver.tokenizer(context)["input_ids"]),
              "context_sharer_tokens": sharer_tokens, "translate_ms": round(translate_ms, 2),
              "receiver_prefills_context_ms": round(context_prefill_ms, 2),
              "translated_prompt_prefill_ms": round(translated_prefill_ms, 2),
              "receiver_reads_context_as_text_prefill_ms": round(text_prefill_ms, 2)}
    result["translate_over_receiver_prefill"] = round(translate_ms / context_prefill_ms, 3)
    print(pairs.name, "translate", result, flush=True)
    return result


# ----------------------------------------------------------------------------------------------- the run
def environment(device: torch.device) -> dict:
    versions = {}
    for package in ("torch", "transformers", "peft", "safetensors", "tokenizers"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    info = {"device": str(device), "device_name": platform.processor() or platform.machine(), "versions": versions,
            "python": platform.python_version(), "cuda": torch.version.cuda, "threads": torch.get_num_threads(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(device_name=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)),
                    memory_gib=round(properties.total_memory / 2**30, 1))
    return info


SECTIONS = {"correctness": correctness, "prefill": prefill, "training": training, "decode": decoding,
            "translation": translation}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and sizes (seconds, on a CPU)")
    parser.add_argument("--pairs", default=",".join(PAIRS), help="comma-separated, of: " + ", ".join(PAIRS))
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated, of: " + ", ".join(SECTIONS))
    parser.add_argument("--out", help="default results/gpu_check.json (results/gpu_check_tiny.json with --tiny)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no GPU; use --device cpu")
    if int(importlib.metadata.version("transformers").split(".")[0]) < 5:
        parser.error(f"c2c needs transformers >= 5; this is {importlib.metadata.version('transformers')}")
    out = Path(args.out or ("results/gpu_check_tiny.json" if args.tiny else "results/gpu_check.json"))
    size = SIZES["tiny" if args.tiny else "full"]
    result = {"command": "python " + " ".join(["benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "dtype": args.dtype, "tiny": args.tiny, "sizes": {k: v for k, v in size.items() if k != "fuser"},
              "tolerance": TOLERANCE, **environment(device), "pairs": {}}
    failed = False
    for name in args.pairs.split(","):
        entry = result["pairs"][name] = {"receiver": PAIRS[name][0], "sharer": PAIRS[name][1]}
        section_started = time.perf_counter()
        try:
            pairs = build_pairs(name, device, dtype, args.tiny)
        except Exception:  # noqa: BLE001 - recorded, the other pairs still run
            entry["error"] = traceback.format_exc()
            print(entry["error"], file=sys.stderr, flush=True)
            failed = True
            continue
        entry.update(token_alignment=pairs.alignment, fuser_parameters=pairs.fuser_parameters,
                     build_s=round(time.perf_counter() - section_started, 2))
        for section in args.sections.split(","):
            section_started = time.perf_counter()
            try:
                entry[section] = SECTIONS[section](pairs, size)
            except Exception:  # noqa: BLE001 - recorded, the other sections still run
                entry[section] = {"error": traceback.format_exc()}
                print(entry[section]["error"], file=sys.stderr, flush=True)
                failed = True
            entry[section]["seconds"] = round(time.perf_counter() - section_started, 2)
            if section == "correctness":
                failed = failed or not entry[section].get("passed", False)
                pairs.full = None  # only the checks read the float32 pair: its memory is not the runs'
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        del pairs
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["correctness_passed"] = all(p.get("correctness", {}).get("passed", False) for p in result["pairs"].values())
    result["seconds"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out} in {result['seconds']} s; correctness passed: {result['correctness_passed']}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
