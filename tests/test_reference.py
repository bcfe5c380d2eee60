"""Converting fusers trained with the reference implementation (thu-nics/C2C) into c2c checkpoints.

A tiny pair's fuser is written in the reference's training-output layout (config.json + final/ with
projector_{i}.pt, projector_{i}.json, projector_config.json; rosetta/model/projector.py C2CProjector names),
converted, and must load strictly and fuse exactly as the fuser it came from.
"""

import json

import pytest
import torch
from conftest import make_pair
from tiny import tiny

from c2c.core import cache as kvcache
from c2c.cli import main
from c2c.model.config import FuserConfig
from c2c.core.tensors import position_ids
from c2c.model.pair import C2CModel, CheckpointError
from c2c.interop.reference import convert_reference

FUSER = FuserConfig(hidden_size=16, intermediate_size=24, zero_init=False, dropout=0.0)
PROMPTS = ["What is the capital of France? Answer in one word.", "hi 你好 🙂"]

# The state dict of the reference's C2CProjector(num_layers=3), names as its state_dict() lists them.
REFERENCE_KEYS = {"key_gate_logit", "value_gate_logit", "gate_temperature"} | {
    f"{x}_{name}" for x in ("key", "value") for name in (
        "in.weight", "in.bias", "mlp1.blocks.0.norm.weight", "mlp1.blocks.0.w1.weight", "mlp1.blocks.0.w2.weight",
        "scalar_mlp2.blocks.0.norm.weight", "scalar_mlp2.blocks.0.w1.weight", "scalar_mlp2.blocks.0.w2.weight",
        "scalar_head.weight", "scalar_head.bias", "proj_mlp2.blocks.0.norm.weight", "proj_mlp2.blocks.0.w1.weight",
        "proj_mlp2.blocks.0.w2.weight", "proj_out.weight", "proj_out.bias")}


def to_reference(fuser) -> dict[str, torch.Tensor]:
    """A LayerFuser's weights under the reference C2CProjector's names, in bfloat16 as the reference saves them."""
    ours = fuser.state_dict()
    blocks = len(fuser.key.projection) - 1
    out = {"key_gate_logit": ours["gate_logits"][0].clone(), "value_gate_logit": ours["gate_logits"][1].clone(),
           "gate_temperature": torch.tensor(0.001)}
    for x in ("key", "value"):
        ffn = {f"{x}_mlp1.blocks.0": f"{x}.trunk", f"{x}_scalar_mlp2.blocks.0": f"{x}.weight.0",
               **{f"{x}_proj_mlp2.blocks.{i}": f"{x}.projection.{i}" for i in range(blocks)}}
        for ref, name in ffn.items():
            for a, b in (("norm", "norm"), ("w1", "up"), ("w2", "down")):
                out[f"{ref}.{a}.weight"] = ours[f"{name}.{b}.weight"]
        for ref, name in ((f"{x}_in", f"{x}.input"), (f"{x}_proj_out", f"{x}.projection.{blocks}"),
                          (f"{x}_scalar_head", f"{x}.weight.1")):
            for p in ("weight", "bias"):
                out[f"{ref}.{p}"] = ours[f"{name}.{p}"]
    return {k: v.to(torch.bfloat16) for k, v in out.items()}


def write_reference(pair: C2CModel, run, recipe: dict | None = None):
    """Write ``pair``'s fusers (sharer 0) as the reference's SFT_train.py would: run/config.json + run/final/."""
    final = run / "final"
    final.mkdir(parents=True)
    r, s, config = pair.receiver.shape, pair.sharers[0].shape, pair.config.fuser
    init_args = dict(source_dim=s.head_dim, target_dim=r.head_dim, source_num_heads=s.num_kv_heads,
                     target_num_heads=r.num_kv_heads, hidden_dim=config.hidden_size,
                     intermediate_dim=config.intermediate_size, num_layers=config.num_layers, dropout=config.dropout,
                     initial_temperature=1.0, final_temperature=0.001, anneal_steps=1929,
                     dtype={"__type__": "torch.dtype", "value": "bfloat16"})
    for i, fuser in enumerate(pair.fusers[0]):
        torch.save(to_reference(fuser), final / f"projector_{i}.pt")
        (final / f"projector_{i}.json").write_text(json.dumps({"class": "C2CProjector", "init_args": init_args}))
    layers = {str(t): [[s, t]] for t, s in enumerate(pair.config.sharers[0].layer_map)}
    (final / "projector_config.json").write_text(json.dumps({"0": {"1": layers}}))
    if recipe is not None:
        (run / "config.json").write_text(json.dumps({"model": recipe, "training": {"seed": 42}}))
    return run


def source_pair(receiver="llama", sharer="gemma", fuser=FUSER, **kwargs) -> C2CModel:
    """A random fuser with open gates, its weights rounded to bfloat16 so the reference's files hold them exactly."""
    pair = make_pair(receiver, (sharer,), fuser=fuser, **kwargs)
    with torch.no_grad():
        for p in pair.fusers.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return pair


def fused(pair: C2CModel, fuse: bool = True) -> tuple[list, torch.Tensor]:
    """The fused (or, with ``fuse`` False, unfused) prefill cache and the last-token logits of PROMPTS."""
    batch = pair.prepare(PROMPTS)
    cache = pair.prefill(batch, fuse=fuse)
    kv = [(k.clone(), v.clone()) for k, v in kvcache.all_kv(cache)]
    last = slice(batch.prompt_length - 1, batch.prompt_length)
    logits = pair.receiver.model(input_ids=batch.input_ids[:, last], attention_mask=batch.attention_mask,
                                 position_ids=position_ids(batch.attention_mask)[:, last], cache=cache).logits[:, -1]
    return kv, logits


@pytest.mark.parametrize("receiver,sharer", [("llama", "gemma"), ("qwen", "llama")])
def test_converted_reference_fuser_fuses_exactly_as_the_original(receiver, sharer, tmp_path):
    pair = source_pair(receiver, sharer, token_alignment="offsets")
    run = write_reference(pair, tmp_path / "run")
    assert set(torch.load(run / "final" / "projector_0.pt", weights_only=True)) == REFERENCE_KEYS
    out = convert_reference(run, tmp_path / "out", tiny(receiver), [tiny(sharer)], token_alignment="offsets")
    converted = C2CModel.from_pretrained(out, tiny(receiver), [tiny(sharer)])  # strict loading
    config = converted.config
    assert config.sharers[0].layer_map == pair.config.sharers[0].layer_map and config.chat_template
    assert (config.fuser.hidden_size, config.fuser.intermediate_size, config.fuser.num_layers) == (16, 24, 3)
    assert config.fuser.gate_noise == "gumbel" and not config.fuser.straight_through
    assert (converted.gate_logits() > 0).all()
    (kv, logits), (expected_kv, expected_logits) = fused(converted), fused(pair)
    for (k, v), (ek, ev) in zip(kv, expected_kv):
        assert torch.equal(k, ek) and torch.equal(v, ev)
    assert torch.equal(logits, expected_logits)
    _, alone = fused(pair, fuse=False)
    assert not torch.allclose(logits, alone)  # the fuser really changes the cache


def test_deeper_projection_and_the_recipe_alignment(tmp_path):
    """num_layers 4 (two proj_mlp2 blocks); the recipe's is_do_alignment/alignment_strategy give the default."""
    pair = source_pair(fuser=FuserConfig(hidden_size=8, intermediate_size=8, num_layers=4, zero_init=False,
                                         dropout=0.0), token_alignment="reencode_longest")
    recipe = {"base_model": "unused", "teacher_model": "unused", "is_do_alignment": True,
              "alignment_strategy": "longest", "mapping": "last_aligned"}
    run = write_reference(pair, tmp_path / "run", recipe)
    out = convert_reference(run / "final", tmp_path / "out", tiny("llama"), [tiny("gemma")])
    converted = C2CModel.from_pretrained(out, tiny("llama"), [tiny("gemma")])
    assert converted.config.sharers[0].token_alignment == "reencode_longest" and converted.config.fuser.num_layers == 4
    assert torch.equal(fused(converted)[1], fused(pair)[1])


def test_without_token_alignment_the_sharer_reads_the_receiver_ids(tmp_path):
    pair = source_pair("llama", "llama")
    recipe = {"base_model": "unused", "teacher_model": "unused", "is_do_alignment": False}
    run = write_reference(pair, tmp_path / "run", recipe)
    out = convert_reference(run, tmp_path / "out", tiny("llama"), [tiny("llama")])
    converted = C2CModel.from_pretrained(out, tiny("llama"), [tiny("llama")])
    assert converted.config.sharers[0].token_alignment == "receiver_ids"
    batch = converted.prepare(PROMPTS)
    assert torch.equal(batch.sharer_ids[0], batch.input_ids)


def test_wrong_shapes_a_missing_layer_and_pickled_objects_are_clear_errors(tmp_path):
    pair = source_pair(token_alignment="offsets")
    convert = lambda run: convert_reference(run, tmp_path / "out", tiny("llama"), [tiny("gemma")],  # noqa: E731
                                            token_alignment="offsets")
    final = write_reference(pair, tmp_path / "a") / "final"
    state = torch.load(final / "projector_1.pt", weights_only=True)
    state["value_proj_out.weight"] = state["value_proj_out.weight"][:-1]
    torch.save(state, final / "projector_1.pt")
    with pytest.raises(CheckpointError, match=r"receiver layer 1 .*value_proj_out.weight has shape \(15, 16\), "
                                              r"expected \(16, 16\)"):
        convert(final.parent)
    del state["value_proj_out.weight"]
    state["value_extra.weight"] = torch.zeros(1)
    torch.save(state, final / "projector_1.pt")
    with pytest.raises(CheckpointError, match=r"receiver layer 1 .*missing \['value_proj_out.weight'\], "
                                              r"unexpected \['value_extra.weight'\]"):
        convert(final.parent)

    final = write_reference(pair, tmp_path / "b") / "final"
    (final / "projector_2.pt").unlink()
    with pytest.raises(CheckpointError, match="receiver layer 2: .*projector_2.pt is missing"):
        convert(final.parent)
    layers = json.loads((final / "projector_config.json").read_text())
    del layers["0"]["1"]["3"]
    (final / "projector_config.json").write_text(json.dumps(layers))
    with pytest.raises(CheckpointError, match=r"no projector for receiver layer\(s\) \[3\]"):
        convert(final.parent)

    final = write_reference(pair, tmp_path / "c") / "final"
    torch.save([torch.zeros(2)], final / "projector_0.pt")
    with pytest.raises(CheckpointError, match="projector_0.pt is not a plain state dict of tensors: it holds a list"):
        convert(final.parent)
    torch.save({"key_in.weight": torch.zeros(2), "note": "trained on 8 GPUs"}, final / "projector_0.pt")
    with pytest.raises(CheckpointError, match="projector_0.pt is not a plain state dict of tensors: 'note' holds "
                                              "a str"):
        convert(final.parent)
    torch.save({"projector": torch.nn.Linear(2, 2)}, final / "projector_0.pt")  # a pickled module: refused
    with pytest.raises(CheckpointError, match=r"projector_0.pt is not a plain state dict of tensors \(it pickles a "
                                              r"torch.nn.modules.linear.Linear object\); c2c never unpickles code") \
            as refused:
        convert(final.parent)
    assert "\n" not in str(refused.value) and "PyTorch 2.6" not in str(refused.value)  # none of torch's own text
    import pickle
    (final / "projector_0.pt").write_bytes(pickle.dumps({"key_in.weight": [0.0, 1.0]}))  # a raw pickle
    with pytest.raises(CheckpointError, match=r"projector_0.pt is not a file written by torch.save \(a raw pickle") \
            as refused:
        convert(final.parent)
    assert "\n" not in str(refused.value)

    final = write_reference(pair, tmp_path / "d") / "final"
    payload = json.loads((final / "projector_0.json").read_text())
    for name in (f"projector_{i}.json" for i in range(4)):
        (final / name).write_text(json.dumps({**payload, "class": "AllInOneProjector"}))
    with pytest.raises(CheckpointError, match="'AllInOneProjector' is not C2CProjector"):
        convert(final.parent)
    for name in (f"projector_{i}.json" for i in range(4)):
        (final / name).write_text(json.dumps({**payload, "init_args": {**payload["init_args"], "source_num_heads": 4}}))
    with pytest.raises(CheckpointError, match="trained for other models.*source_num_heads"):
        convert(final.parent)

    run = write_reference(pair, tmp_path / "e", {"include_response": True})  # fused decoding: not in c2c
    with pytest.raises(CheckpointError, match="include_response"):
        convert(run)


def test_cli_reads_the_model_names_from_the_reference_config(tmp_path, capsys):
    pair = source_pair(token_alignment="offsets")
    folders = {}
    for kind in ("llama", "gemma"):
        tiny(kind).model.save_pretrained(tmp_path / kind)
        tiny(kind).tokenizer.save_pretrained(tmp_path / kind)
        folders[kind] = str(tmp_path / kind)
    run = write_reference(pair, tmp_path / "run", {"base_model": folders["llama"], "teacher_model": folders["gemma"],
                                                   "is_do_alignment": True, "alignment_strategy": "first"})
    main(["convert-reference", str(run), "--out", str(tmp_path / "out"), "--token-alignment", "offsets"])
    assert "saved to" in capsys.readouterr().out
    converted = C2CModel.from_pretrained(tmp_path / "out")  # loads the models the reference named
    assert converted.config.receiver == folders["llama"] and converted.config.sharers[0].model == folders["gemma"]
    assert converted.config.sharers[0].token_alignment == "offsets"
    main(["convert-reference", str(run), "--out", str(tmp_path / "default")])  # the reference's strategy
    main(["inspect", "--fuser", str(tmp_path / "default")])  # shows the alignment the converted fuser needs
    assert "token alignment (reencode_first)" in capsys.readouterr().out
    (run / "config.json").unlink()
    with pytest.raises(SystemExit, match="names no models.*--receiver, --sharer"):
        main(["convert-reference", str(run), "--out", str(tmp_path / "out2")])
