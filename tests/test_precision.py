"""bf16 and fp16 on the CPU: the fusers keep float32 weights and compute in the receiver's dtype; inference,
choice scores and a training step run and stay close to float32; shut gates still equal the receiver exactly."""

import copy
import json
import math

import pytest
import torch
from conftest import SMALL_FUSER
from tiny import tiny

from c2c.core.models import LoadedModel, parse_device, parse_dtype
from c2c.model.pair import C2CModel

PROMPTS = ["What is the capital of France?", "hi 你好 🙂 Water boils at what temperature?"]
CHOICES = [[" Paris", " Rome", " Oslo"], [" 100 degrees", " zero"]]


def in_dtype(kind: str, dtype: torch.dtype) -> LoadedModel:
    model = tiny(kind)
    return LoadedModel(model.name, copy.deepcopy(model.model).to(dtype), model.tokenizer)


def pair_in(dtype: torch.dtype, receiver="llama", sharer="gemma", open_gates=True) -> C2CModel:
    models = in_dtype(receiver, dtype), in_dtype(sharer, dtype)
    torch.manual_seed(0)  # after the models: building a tiny model reseeds
    pair = C2CModel.create(models[0], [models[1]], SMALL_FUSER)
    with torch.no_grad():
        for fuser in pair.layer_fusers():
            fuser.gate_logits.fill_(1.0 if open_gates else -1.0)
    return pair.eval()



@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("receiver,sharer", [("llama", "gemma"), ("qwen", "llama")])
def test_half_precision_inference_runs_and_stays_close_to_float32(dtype, receiver, sharer):
    full, half = pair_in(torch.float32, receiver, sharer), pair_in(dtype, receiver, sharer)
    assert all(p.dtype == torch.float32 for p in half.fusers.parameters())  # master weights stay float32
    with torch.no_grad():
        scores = [torch.cat(pair.choice_scores(pair.prepare(PROMPTS), CHOICES)) for pair in (full, half)]
        shift = [torch.cat(pair.choice_scores(pair.prepare(PROMPTS), CHOICES)) -
                 torch.cat(pair.choice_scores(pair.prepare(PROMPTS), CHOICES, fuse=False)) for pair in (full, half)]
    torch.testing.assert_close(scores[1].float(), scores[0], rtol=0.01, atol=0.02)
    assert shift[1].abs().max() > 1e-2  # the fusion acts in half precision too ...
    torch.testing.assert_close(shift[1].float(), shift[0], rtol=0.05, atol=0.02)  # ... as it does in float32
    assert len(half.generate(PROMPTS, max_new_tokens=4)) == 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_shut_gates_equal_the_receiver_bit_for_bit_in_half_precision(dtype):
    pair = pair_in(dtype, open_gates=False)
    with torch.no_grad():
        fused = torch.cat(pair.choice_scores(pair.prepare(PROMPTS), CHOICES))
        alone = torch.cat(pair.choice_scores(pair.prepare(PROMPTS), CHOICES, fuse=False))
    assert torch.equal(fused, alone)
    assert pair.generate(PROMPTS, max_new_tokens=5) == pair.generate(PROMPTS, max_new_tokens=5, fuse=False)


def test_a_bf16_training_step_gives_float32_gradients_close_to_float32():
    losses, grads = [], []
    for dtype in (torch.float32, torch.bfloat16):
        pair = pair_in(dtype).train()
        batch = pair.prepare(PROMPTS, responses=["Paris.", "Hot!"])
        torch.manual_seed(1)  # the same gate noise
        _, loss = pair(batch)
        loss.backward()
        first = next(pair.layer_fusers()).key.input.weight
        assert first.dtype == torch.float32 and first.grad.dtype == torch.float32
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in pair.fusers.parameters() if p.grad is not None]))
    assert abs(losses[1] - losses[0]) < 0.05 * abs(losses[0])
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.95


def test_dtype_and_device_names_are_checked():
    assert parse_dtype("bfloat16") is torch.bfloat16 and parse_device("cpu").type == "cpu"
    assert parse_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="expected one of"):
        parse_dtype("float8")
    with pytest.raises(ValueError, match="not a device"):
        parse_device("tpu-ish:x")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            parse_device("cuda")


def test_a_bf16_training_run_keeps_float32_weights_in_its_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from c2c.training.train import TrainConfig, train
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in [("What is the capital of France?", "Paris."), ("Name an animal.", "The dog."),
                                         ("Water boils at what temperature?", "100 degrees.")]))
    config = TrainConfig(output=str(tmp_path / "run"), data=[str(data)], steps=6, batch_size=2, eval_examples=0,
                         lr=1e-2, save_every=3, log_every=1, dtype="bfloat16", sharer_cache=False,
                         fuser={"hidden_size": 16, "intermediate_size": 16})
    output = train(config, receiver=in_dtype("llama", torch.bfloat16), sharers=[in_dtype("gemma", torch.bfloat16)])
    losses = [json.loads(line)["loss"] for line in (output / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]
    assert {t.dtype for t in load_file(str(output / "fuser.safetensors")).values()} == {torch.float32}
    with pytest.raises(ValueError, match="dtype 'half' is not supported"):
        TrainConfig(data=[str(data)], steps=1, dtype="half")


@pytest.mark.parametrize("command", [["inspect"], ["generate", "hi"], ["eval", "--bench", "arc-easy"], ["chat"],
                                     ["serve"], ["train", "recipe.yaml"], ["convert-reference", "run", "--out", "o"]])
def test_every_command_that_loads_models_takes_dtype_and_device(command):
    from c2c.cli import build_parser
    args = build_parser().parse_args(command + ["--dtype", "bfloat16", "--device", "cpu"])
    assert (args.dtype, args.device) == ("bfloat16", "cpu")


def test_the_fit_reads_a_constant_input_as_its_mean_so_half_precision_noise_on_it_changes_nothing():
    """The maps divide by each input's scale: where the fit saw a constant (e.g. a dimension that is ~1e-9 in
    float32: scale ~1e-6), bf16 rounding noise would be amplified a millionfold (the shipped translator answered
    gibberish in bf16 before). The fit gives such an input the scale 1 and next to no weight."""
    from c2c.core.models import ModelShape
    from c2c.translator.config import TranslatorConfig
    from c2c.translator.fit import TranslatorFit
    from c2c.translator.model import ContextTranslator
    shape = ModelShape("tiny", 2, 1, 4, 10)
    translator = ContextTranslator(shape, shape, TranslatorConfig(window=0, ridge=[0.01]))
    torch.manual_seed(0)
    fit = TranslatorFit(translator)

    def features(n):  # per sharer layer (n, 8): K (4) and V (4); input 0 is float noise around zero
        x = [torch.randn(n, 8) for _ in range(2)]
        for layer in x:
            layer[:, 0] = 1e-9 * torch.randn(n)
        return x, [layer @ torch.randn(8, 8) for layer in x]

    fit.add(*features(200))
    fit.add(*features(50), held_out=True)
    fit.solve()
    assert (translator.input_scale[:, 0] == 1).all() and (translator.input_scale[:, 1:] != 1).all()
    assert all(torch.isfinite(t).all() for t in translator.state_dict().values())  # a checkpoint holds it
    assert translator.maps[0].weight[:, 0].abs().max() < 1e-6
    kv = [(torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)) for _ in range(2)]
    for keys, _ in kv:
        keys[..., 0] = 0.0
    noisy = [(k.clone().index_fill_(-1, torch.tensor([0]), 1e-3).to(torch.bfloat16), v.to(torch.bfloat16))
             for k, v in kv]  # rounding noise on the constant input
    with torch.no_grad():
        exact, half = translator(kv), translator(noisy)
    for (k, v), (k_half, v_half) in zip(exact, half):
        assert k_half.dtype == torch.bfloat16  # computed in the models' dtype
        torch.testing.assert_close(k_half.float(), k, rtol=0.05, atol=0.1)
        torch.testing.assert_close(v_half.float(), v, rtol=0.05, atol=0.1)


def test_folded_maps_compute_what_the_standardised_maps_do():
    """At inference the standardisation is folded into the maps and maps with the same sources are one product;
    while the maps train they standardise (phase 2's coordinates). Both give the same K/V (float32)."""
    from c2c.core.models import ModelShape
    from c2c.translator.config import TranslatorConfig
    from c2c.translator.model import ContextTranslator
    torch.manual_seed(0)
    translator = ContextTranslator(ModelShape("s", 5, 1, 4, 10), ModelShape("r", 7, 2, 3, 10), TranslatorConfig())
    with torch.no_grad():
        for linear in translator.maps:
            linear.weight.normal_()
        translator.input_mean.normal_()
        translator.input_scale.uniform_(0.5, 2)
        translator.output_mean.normal_()
    kv = [(torch.randn(2, 1, 6, 4), torch.randn(2, 1, 6, 4)) for _ in range(5)]
    with torch.no_grad():
        folded = translator(kv)
    assert len(translator.folded(torch.float32, torch.device("cpu"))) == len({tuple(s) for s in translator.sources}) < 7
    trained = translator(kv)  # grad enabled, weights require grad: the standardised path
    assert trained[0][0].requires_grad and not folded[0][0].requires_grad
    for (k, v), (kt, vt) in zip(folded, trained):
        torch.testing.assert_close(k, kt.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v, vt.detach(), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        translator.maps[0].weight.add_(1)  # a changed map is folded again
        assert not translator(kv)[0][0].equal(folded[0][0])


def test_a_fuser_stored_in_half_precision_loads_its_rounded_weights_into_float32(tmp_path):
    from safetensors.torch import load_file
    pair = pair_in(torch.float32)
    with torch.no_grad():
        for parameter in pair.fusers.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    pair.config.fuser.storage_dtype = "float16"
    pair.save_pretrained(tmp_path / "half")
    assert {t.dtype for t in load_file(str(tmp_path / "half" / "fuser.safetensors")).values()} == {torch.float16}
    loaded = C2CModel.from_pretrained(tmp_path / "half", pair.receiver, pair.sharers)
    assert loaded.config.fuser.storage_dtype == "float16"
    for (name, kept), (_, read) in zip(pair.fusers.state_dict().items(), loaded.fusers.state_dict().items()):
        assert read.dtype == torch.float32 and torch.equal(read, kept.half().float()), name
    with torch.no_grad():
        scores = [torch.cat(p.choice_scores(p.prepare(PROMPTS), CHOICES)) for p in (pair, loaded)]
    torch.testing.assert_close(scores[1], scores[0], rtol=1e-3, atol=1e-3)
    saved = json.loads((tmp_path / "half" / "c2c_config.json").read_text())
    del saved["fuser"]["storage_dtype"]  # a checkpoint from before the setting: float32, as it was written
    (tmp_path / "half" / "c2c_config.json").write_text(json.dumps(saved))
    assert C2CModel.from_pretrained(tmp_path / "half", pair.receiver, pair.sharers).config.fuser.storage_dtype == \
        "float32"
    with pytest.raises(ValueError, match="fuser storage_dtype 'half' is unknown"):
        type(pair.config.fuser)(storage_dtype="half")
