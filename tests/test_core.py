"""Core: token and layer alignment, the fuser, the fused runtime and checkpoints, on tiny models."""

import copy
import dataclasses
import json

import pytest
import torch
from conftest import SMALL_FUSER, count_sharer_runs, make_pair
from tiny import tiny

from c2c.core import cache as kvcache
from c2c.inputs.align import TokenAligner, as_messages, content_tokens, layer_map, render
from c2c.model.config import FuserConfig
from c2c.model.fuser import LayerFuser, temperature_at
from c2c.core.models import LoadedModel
from c2c.core.tensors import position_ids
from c2c.model.pair import C2CModel, CheckpointError
from c2c.core.rotary import Rotary

TRICKY = [
    "Hello world, 你好 🙂! What's the capital of France?",
    "東京 는 한국어 😀😀 and   spaces\tand tabs",
    "<|im_start|> looks special but is text; 机器学习 很有趣。",
]
PAIRS = [("llama", "gemma"), ("gemma", "llama"), ("qwen", "llama"), ("llama", "qwen")]


# ------------------------------------------------------------------------------------------- token alignment
@pytest.mark.parametrize("receiver,sharer", PAIRS)
@pytest.mark.parametrize("text", TRICKY)
@pytest.mark.parametrize("chat", [True, False])
def test_offsets_alignment_maps_each_token_to_the_sharer_token_covering_its_end(receiver, sharer, text, chat):
    r, s = tiny(receiver).tokenizer, tiny(sharer).tokenizer
    messages = as_messages(text)
    view = render(r, messages, chat)
    alignment = TokenAligner(r, s, "offsets").align(messages, view, chat)
    sharer_view = render(s, messages, chat)
    assert alignment.sharer_ids == sharer_view.ids  # the sharer reads the text its own way
    assert len(alignment.positions) == len(view.ids) and alignment.positions[-1] == -1
    (r_start, _), (s_start, _) = view.spans[0], sharer_view.spans[0]
    fused = 0
    for index, message, a, b in content_tokens(view):
        position = alignment.positions[index]
        if index == len(view.ids) - 1:
            continue
        fused += 1
        assert position >= 0, f"content token {index} ({view.text[r_start + a:r_start + b]!r}) not fused"
        sa, sb = sharer_view.offsets[position]
        # The sharer token covers the last character of the receiver token (or is the last one before it).
        assert sa - s_start <= b - 1 and (sb - s_start >= b or all(
            o[0] - s_start > b - 1 for o in sharer_view.offsets[position + 1:] if o[1] > o[0]))
    assert fused == alignment.exact + alignment.approximate > 0
    template_positions = {i for i in range(len(view.ids))} - {t[0] for t in content_tokens(view)}
    assert all(alignment.positions[i] == -1 for i in template_positions)  # template tokens are never fused


def test_byte_level_pieces_of_one_character_share_its_sharer_token():
    r, s = tiny("llama").tokenizer, tiny("gemma").tokenizer
    messages = as_messages("x 猫 y")  # not in the tiny corpus: byte-level BPE splits it into byte pieces
    view = render(r, messages, chat=False)
    alignment = TokenAligner(r, s, "offsets").align(messages, view, chat=False)
    pieces = [i for i, (a, b) in enumerate(view.offsets) if view.text[a:b] == "猫"]
    assert len(pieces) == len("猫".encode()) == 3  # one piece per UTF-8 byte: nothing in the tiny vocabulary merges them
    targets = {alignment.positions[i] for i in pieces}
    assert len(targets) == 1
    sharer_view = render(s, messages, chat=False)
    assert "猫" in sharer_view.text[slice(*sharer_view.offsets[targets.pop()])] or s.unk_token_id in sharer_view.ids


@pytest.mark.parametrize("receiver,sharer", PAIRS)
def test_offsets_ahead_reads_the_next_sharer_token_and_ends_on_the_sharers_last(receiver, sharer):
    r, s = tiny(receiver).tokenizer, tiny(sharer).tokenizer
    messages = as_messages("Question: What is Mira's home city?\nAnswer:")
    view = render(r, messages, chat=False)
    offsets = TokenAligner(r, s, "offsets").align(messages, view, chat=False)
    ahead = TokenAligner(r, s, "offsets_ahead").align(messages, view, chat=False)
    last = len(offsets.sharer_ids) - 1
    assert ahead.sharer_ids == offsets.sharer_ids
    assert ahead.positions == [min(p + 1, last) if p >= 0 else -1 for p in offsets.positions]
    assert ahead.positions[-1] == -1 and ahead.positions[-2] == last  # the last fused position: the sharer's last
    assert offsets.positions[-2] < last  # which plain offsets never fuse


def test_chat_templates_differ_and_only_message_text_is_fused():
    r, s = tiny("llama").tokenizer, tiny("qwen").tokenizer
    messages = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Japan?"}]
    view = render(r, messages, chat=True)
    assert "<|im_start|>" in view.text and all(span is not None for span in view.spans)
    alignment = TokenAligner(r, s, "offsets").align(messages, view, chat=True)
    sharer_view = render(s, messages, chat=True)
    assert "<<user>>" in sharer_view.text
    for index, position in enumerate(alignment.positions):
        if position >= 0:
            text = sharer_view.text[slice(*sharer_view.offsets[position])]
            assert "<<" not in text and "<end>" not in text
    assert sum(p >= 0 for p in alignment.positions) > 8


@pytest.mark.parametrize("strategy", ["reencode_first", "reencode_longest"])
def test_reference_strategies_give_one_sharer_token_per_receiver_token(strategy):
    r, s = tiny("llama").tokenizer, tiny("gemma").tokenizer
    messages = as_messages(TRICKY[0])
    view = render(r, messages, chat=True)
    alignment = TokenAligner(r, s, strategy).align(messages, view, chat=True)
    fused = [p for p in alignment.positions if p >= 0]
    assert fused == list(range(1, len(alignment.sharer_ids)))  # position 0 is the sharer's BOS
    assert alignment.sharer_ids[0] == s.bos_token_id


def test_longest_keeps_the_longest_piece_and_first_the_first():
    r, s = tiny("llama").tokenizer, tiny("qwen").tokenizer
    messages = as_messages("capital")
    view = render(r, messages, chat=False)
    first = TokenAligner(r, s, "reencode_first").align(messages, view, chat=False)
    longest = TokenAligner(r, s, "reencode_longest").align(messages, view, chat=False)
    for index, _, _, _ in content_tokens(view)[:-1]:
        pieces = s.encode(r.decode([view.ids[index]]), add_special_tokens=False)
        assert first.sharer_ids[first.positions[index]] == pieces[0]
        assert len(s.decode([longest.sharer_ids[longest.positions[index]]])) == max(len(s.decode([p])) for p in pieces)


def test_receiver_ids_feed_the_sharer_the_receiver_ids_whatever_its_chat_template():
    """The reference's layout for a shared vocabulary: same ids, another template (as Qwen3 <- Qwen2.5)."""
    llama = tiny("llama")
    other_template = copy.deepcopy(llama.tokenizer)
    other_template.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    sharer = LoadedModel("tiny-llama-other-template", llama.model, other_template)
    pair = C2CModel.create(llama, [sharer], SMALL_FUSER, token_alignment="receiver_ids")
    batch = pair.prepare(PROMPTS)
    assert pair.config.sharers[0].token_alignment == "receiver_ids"
    assert torch.equal(batch.sharer_ids[0], batch.input_ids)  # the receiver's ids, its template included
    real = batch.attention_mask.bool()
    real[:, -1] = False  # the last prompt token reads the fused cache, unfused
    assert (batch.positions[0] >= 0).eq(real).all()  # every other real position is fused, template included
    assert len(pair.generate(PROMPTS, max_new_tokens=3)) == len(PROMPTS)
    with pytest.raises(ValueError, match="receiver has 400 ids and the sharer's vocabulary only 300"):
        C2CModel.create(tiny("llama"), [tiny("gemma")], SMALL_FUSER, token_alignment="receiver_ids")
    with pytest.raises(ValueError, match="now called 'reencode_first'"):
        TokenAligner(llama.tokenizer, tiny("gemma").tokenizer, "first")


def test_same_tokenizer_uses_the_identity_fast_path():
    pair = make_pair("llama", ("llama",))
    assert pair.config.sharers[0].token_alignment == "identity"
    batch = pair.prepare(["hello there"])
    assert torch.equal(batch.sharer_ids[0], batch.input_ids)
    length = batch.input_ids.shape[1]
    assert batch.positions[0][0].tolist() == list(range(length - 1)) + [-1]
    with pytest.raises(ValueError, match="identity"):
        TokenAligner(tiny("llama").tokenizer, tiny("gemma").tokenizer, "identity")


def test_empty_prompt_is_a_clear_error():
    pair = make_pair()
    with pytest.raises(ValueError, match="empty"):
        pair.prepare(["   "])


def test_over_long_prompt_is_a_clear_error():
    pair = make_pair()
    with pytest.raises(ValueError, match="exceeds the receiver.s 1024 positions"):
        pair.generate("word " * 1100, max_new_tokens=4)


# ------------------------------------------------------------------------------------------- layer maps
def test_layer_maps():
    assert layer_map("last_aligned", 28, 24) == [0] * 5 + list(range(1, 24))
    assert layer_map("last_aligned", 28, 36) == [t + 8 for t in range(28)]
    assert layer_map("last_aligned", 3, 3) == [0, 1, 2]
    spread = layer_map("spread", 30, 18)
    assert spread[0] == 0 and spread[-1] == 17 and spread == sorted(spread)
    assert layer_map("spread", 4, 9) == [0, 3, 5, 8]
    assert layer_map([2, 1, 0], 3, 5) == [2, 1, 0]
    with pytest.raises(ValueError, match="one sharer layer"):
        layer_map([0, 9, 0], 3, 5)
    with pytest.raises(ValueError, match="unknown"):
        layer_map("nearest", 3, 5)


# ------------------------------------------------------------------------------------------- fuser
def test_fuser_parameter_count_matches_the_reference():
    """Qwen3-0.6B (28 layers, 8 KV heads x 128) <- Qwen2.5-0.5B (2 x 64) with the reference's sizes."""
    config = FuserConfig(hidden_size=1024, intermediate_size=1024, num_layers=3)
    with torch.device("meta"):
        layer = LayerFuser(2, 64, 8, 128, config)
    assert sum(p.numel() for p in layer.parameters()) * 28 == 477_848_056


def test_fuser_shapes_and_zero_init():
    fuser = LayerFuser(1, 16, 2, 8, FuserConfig(hidden_size=16, intermediate_size=24)).eval()
    with torch.no_grad():
        fuser.gate_logits.fill_(1.0)
    sk, sv, rk, rv = torch.randn(3, 1, 5, 16), torch.randn(3, 1, 5, 16), torch.randn(3, 2, 5, 8), torch.randn(3, 2, 5, 8)
    key, value = fuser(sk, sv, rk, rv)
    assert key.shape == value.shape == (3, 2, 5, 8)
    assert torch.count_nonzero(key) == 0 and torch.count_nonzero(value) == 0  # zero_init: exact no-op


def test_sharer_only_fuser_ignores_the_receiver_cache():
    config = FuserConfig(hidden_size=16, intermediate_size=16, zero_init=False, dropout=0.0, receiver_input=False)
    fuser = LayerFuser(1, 16, 2, 8, config).eval()
    assert fuser.key.input.in_features == 16  # the sharer's 1 x 16 alone, no receiver 2 x 8
    with torch.no_grad():
        fuser.gate_logits.fill_(1.0)
    sk, sv, rk, rv = torch.randn(3, 1, 5, 16), torch.randn(3, 1, 5, 16), torch.randn(3, 2, 5, 8), torch.randn(3, 2, 5, 8)
    key, value = fuser(sk, sv, rk, rv)
    other_key, other_value = fuser(sk, sv, torch.randn_like(rk), torch.randn_like(rv))
    torch.testing.assert_close(key, other_key, rtol=0, atol=0)
    torch.testing.assert_close(value, other_value, rtol=0, atol=0)
    assert not torch.equal(key, fuser(torch.randn_like(sk), sv, rk, rv)[0])  # it does read the sharer


def test_closed_gates_skip_work_and_gate_training_noise_matches_inference():
    config = FuserConfig(hidden_size=8, intermediate_size=8, zero_init=False, straight_through=False)
    fuser = LayerFuser(1, 4, 1, 4, config)
    with torch.no_grad():
        fuser.gate_logits.copy_(torch.tensor([-0.1, 0.3]))
    fuser.eval()
    sharer, receiver = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    key, value = fuser(sharer, sharer, receiver, receiver)
    projection, weight = fuser.value(sharer, receiver)  # the open V gate at inference is exactly 1
    assert key is None and torch.equal(value, weight * projection) and value.abs().sum() > 0
    # Logistic noise at a low temperature opens a gate with probability sigmoid(logit).
    fuser.train()
    fuser.temperature.fill_(1e-3)
    gates = torch.stack([fuser._gate(0, (20000,), torch.zeros(1)) for _ in range(5)])
    assert abs(gates.mean().item() - torch.sigmoid(torch.tensor(-0.1)).item()) < 0.01


def test_straight_through_gate_is_hard_forward_and_differentiable():
    fuser = LayerFuser(1, 4, 1, 4, FuserConfig(hidden_size=8, intermediate_size=8)).train()
    gate = fuser._gate(1, (1000,), torch.zeros(1))
    assert set(gate.detach().unique().tolist()) == {0.0, 1.0}  # hard, and noisy: logit 0 opens about half of them
    gate.sum().backward()
    assert fuser.gate_logits.grad[1] != 0


def test_temperature_anneals_over_the_real_number_of_steps():
    config = FuserConfig()
    assert temperature_at(0, 50, config) == pytest.approx(1.0)
    assert temperature_at(25, 50, config) == pytest.approx(config.temperature_end ** 0.5)
    assert temperature_at(50, 50, config) == pytest.approx(config.temperature_end)
    assert temperature_at(80, 50, config) == pytest.approx(config.temperature_end)


def test_fuser_config_validation_and_round_trip():
    config = FuserConfig(hidden_size=32, receiver_input=False)
    assert FuserConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown fuser config keys"):
        FuserConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="hidden_size"):
        FuserConfig(hidden_size=0)


# ------------------------------------------------------------------------------------------- runtime
PROMPTS = ["What is the capital of France? Answer in one word, then explain why at some length.",
           "hi 你好 🙂", "Water boils at what temperature?"]


def _last_logits(pair, prompts, fuse=True):
    batch = pair.prepare(prompts)
    cache = pair.prefill(batch, fuse=fuse)
    last = slice(batch.prompt_length - 1, batch.prompt_length)
    output = pair.receiver.model(input_ids=batch.input_ids[:, last], attention_mask=batch.attention_mask,
                                 position_ids=position_ids(batch.attention_mask)[:, last], cache=cache)
    return output.logits[:, -1]


@pytest.mark.parametrize("receiver,sharer", PAIRS)
def test_closed_gates_are_bit_identical_to_the_receiver_alone(receiver, sharer):
    pair = make_pair(receiver, (sharer,), open_gates=False)
    fused = _last_logits(pair, PROMPTS)
    alone = _last_logits(pair, PROMPTS, fuse=False)
    assert torch.equal(fused, alone)
    assert pair.generate(PROMPTS, max_new_tokens=6) == pair.generate(PROMPTS, max_new_tokens=6, fuse=False)
    # ... and the two-section receiver equals the stock receiver up to float rounding.
    batch = pair.prepare(PROMPTS)
    stock = pair.receiver.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                position_ids=position_ids(batch.attention_mask)).logits[:, -1]
    torch.testing.assert_close(fused, stock, rtol=1e-4, atol=1e-5)


def test_zero_init_fuser_with_open_gates_is_the_receiver_alone():
    pair = make_pair(fuser=FuserConfig(hidden_size=16, intermediate_size=16, zero_init=True), open_gates=True)
    fuser = next(pair.layer_fusers())
    key, value = fuser(torch.randn(1, 1, 5, 16), torch.randn(1, 1, 5, 16), torch.randn(1, 2, 5, 8),
                       torch.randn(1, 2, 5, 8))
    assert not key.any() and not value.any()  # exactly nothing added ...
    fused = _last_logits(pair, PROMPTS)
    alone = _last_logits(pair, PROMPTS, fuse=False)
    # ... though the open gates run the prompt in sections (float rounding apart from the one-pass receiver)
    torch.testing.assert_close(fused, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("receiver,sharer", PAIRS)
def test_open_gates_change_the_output(receiver, sharer):
    pair = make_pair(receiver, (sharer,))
    fused = _last_logits(pair, PROMPTS)
    alone = _last_logits(pair, PROMPTS, fuse=False)
    assert (fused - alone).abs().max() > 1e-3


@pytest.mark.parametrize("receiver,sharer", PAIRS)
def test_batch_equals_one_at_a_time(receiver, sharer):
    pair = make_pair(receiver, (sharer,))
    batched = _last_logits(pair, PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(batched[row], _last_logits(pair, [prompt])[0], rtol=1e-4, atol=1e-5)
    assert pair.generate(PROMPTS, max_new_tokens=5) == [pair.generate(p, max_new_tokens=5)[0] for p in PROMPTS]


CONVERSATIONS = [[{"role": "system", "content": "You answer in one word."},
                  {"role": "user", "content": "What is the capital of France?"}],
                 "hi 你好 🙂", [{"role": "user", "content": "Water boils at what temperature?"}]]


@pytest.mark.parametrize("receiver,sharer", [p for p in PAIRS if p[0] != "gemma"])  # receivers with a chat template
def test_tokens_after_a_fused_run_are_computed_over_the_fused_cache(receiver, sharer):
    """The reference runs its sections in order: the template tokens after the fused message are the receiver's
    K/V computed over the fused cache, so they equal a pass over those tokens with the fused prefix as past."""
    pair = make_pair(receiver, (sharer,))
    batch = pair.prepare(["What is the capital of France?"])
    fused = batch.positions[0][0] >= 0
    end = int(fused.nonzero().max()) + 1  # the column after the (single) fused run
    assert end < batch.prompt_length - 1, "the chat template leaves tokens between the message and the last"
    cache = pair.prefill(batch)
    prefix = kvcache.cache_from_kv([(k[:, :, :end], v[:, :, :end]) for k, v in kvcache.all_kv(cache)])
    tail = slice(end, batch.prompt_length - 1)
    pair.receiver.model(input_ids=batch.input_ids[:, tail], attention_mask=batch.attention_mask[:, :tail.stop],
                        position_ids=position_ids(batch.attention_mask)[:, tail], cache=prefix, use_cache=True)
    alone = pair.prefill(batch, fuse=False)
    for (k, v), (k_again, v_again), (k_alone, _) in zip(kvcache.all_kv(cache), kvcache.all_kv(prefix),
                                                        kvcache.all_kv(alone)):
        torch.testing.assert_close(k[:, :, tail], k_again[:, :, tail], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v[:, :, tail], v_again[:, :, tail], rtol=1e-5, atol=1e-6)
    # ... and differ from the receiver's own tail K/V (in the first layer, keys depend on the tokens alone)
    deepest = kvcache.all_kv(cache)[-1][0][:, :, tail]
    assert (deepest - kvcache.all_kv(alone)[-1][0][:, :, tail]).abs().max() > 1e-4


@pytest.mark.parametrize("receiver,sharer", PAIRS)
def test_rows_whose_fused_runs_end_at_different_columns_equal_one_at_a_time(receiver, sharer):
    """A system message ends its own fused run, earlier than the user's, in one row only."""
    pair = make_pair(receiver, (sharer,))
    batch = pair.prepare(CONVERSATIONS)
    assert len(pair._fused_runs(batch, batch.prompt_length - 1)) > 1  # several run ends in this batch
    batched = _last_logits(pair, CONVERSATIONS)
    for row, prompt in enumerate(CONVERSATIONS):
        torch.testing.assert_close(batched[row], _last_logits(pair, [prompt])[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("alignment", ["offsets", "offsets_ahead"])
def test_only_reading_ahead_fuses_the_sharers_last_prompt_token(alignment):
    """With ``offsets_ahead`` the last fused column reads the sharer's K/V at the prompt's last token: changing
    them changes the fused cache there; with ``offsets`` no fused column reads them."""
    pair = make_pair("llama", ("gemma",), token_alignment=alignment, chat_template=False)
    batch = pair.prepare(["Question: What is Mira's home city?\nAnswer:"])
    last_fused = int((batch.positions[0][0] >= 0).nonzero().max())
    sharer_last = batch.sharer_ids[0].shape[1] - 1  # one row: the sharer's last prompt token
    assert (int(batch.positions[0][0, last_fused]) == sharer_last) == (alignment == "offsets_ahead")
    run = pair.sharer_cache_provider

    def changed_at_the_end(pair_, batch_, chunks=None):
        return [[(k.clone().index_fill_(2, torch.tensor([sharer_last]), 3.0), v) for k, v in layers]
                for layers in run(pair_, batch_, chunks)]
    cache = [k for k, _ in kvcache.all_kv(pair.prefill(batch))]
    pair.sharer_cache_provider = changed_at_the_end
    changed = [k for k, _ in kvcache.all_kv(pair.prefill(batch))]
    difference = max((a - b).abs().max().item() for a, b in zip(cache, changed))
    assert (difference > 1e-4) == (alignment == "offsets_ahead")


def test_padding_and_template_positions_are_not_fused_per_row():
    pair = make_pair()
    batch = pair.prepare(PROMPTS)
    positions = batch.positions[0]
    padded = batch.attention_mask[:, :batch.prompt_length] == 0
    assert padded.any() and (positions[padded] == -1).all()
    assert (positions[:, -1] == -1).all()  # the last prompt token of every row is never fused
    for row in range(len(PROMPTS)):
        fused = positions[row][positions[row] >= 0]
        assert (batch.sharer_mask[0][row, fused] == 1).all()  # never points at sharer padding
        assert fused.tolist() == sorted(fused.tolist())


def test_sliding_window_sharer_keeps_every_position():
    """The tiny Gemma has a window of 8: a long prompt still has sharer K/V for its first positions."""
    pair = make_pair("llama", ("gemma",))
    prompt = "The quick brown fox jumps over the lazy dog. Water boils at 100 degrees Celsius."
    batch = pair.prepare([prompt])
    kv = pair.sharer_caches(batch)[0]
    assert all(k.shape[2] == batch.sharer_ids[0].shape[1] > 8 for k, _ in kv)
    assert batch.positions[0][0, :10].ge(0).sum() > 0  # early receiver positions read early sharer positions
    # The full-length cache does not change what the sharer computes: compare with its stock forward.
    gemma = tiny("gemma").model
    ids, mask = batch.sharer_ids[0], batch.sharer_mask[0]
    stock = gemma(input_ids=ids, attention_mask=mask).logits[:, -1]
    full = gemma(input_ids=ids, attention_mask=mask, cache=kvcache.full_length_cache(), use_cache=True).logits[:, -1]
    torch.testing.assert_close(stock, full)


def test_several_sharers_sum_their_residuals():
    both = make_pair("llama", ("gemma", "qwen"))
    only_gemma = make_pair("llama", ("gemma",))
    only_gemma.fusers[0].load_state_dict(both.fusers[0].state_dict())
    with torch.no_grad():
        for fuser in both.fusers[1]:
            fuser.gate_logits.fill_(-1.0)
    torch.testing.assert_close(_last_logits(both, PROMPTS), _last_logits(only_gemma, PROMPTS), rtol=0, atol=0)
    with torch.no_grad():
        for fuser in both.fusers[1]:
            fuser.gate_logits.fill_(1.0)
    assert not torch.equal(_last_logits(both, PROMPTS), _last_logits(only_gemma, PROMPTS))


def test_shuffled_sharer_reads_another_prompt():
    pair = make_pair()
    own = pair.prepare(PROMPTS[:2])
    shuffled = pair.prepare(PROMPTS[:2], sharer_prompts=PROMPTS[1::-1])
    assert torch.equal(shuffled.input_ids, own.input_ids)
    assert not torch.equal(shuffled.sharer_ids[0], own.sharer_ids[0])
    assert ((shuffled.positions[0] >= 0) == (own.positions[0] >= 0)).all()  # same receiver positions fused


def test_training_forward_masks_prompt_and_trains_only_the_fuser():
    pair = make_pair().train()
    batch = pair.prepare(PROMPTS[:2], responses=["Paris.", "Hello!"])
    assert (batch.labels[:, :batch.prompt_length] == -100).all()  # no loss on the prompt
    assert (batch.labels[:, batch.prompt_length:] != -100).sum() > 2
    cache = pair.prefill(batch)
    assert kvcache.seq_length(cache) == batch.prompt_length - 1  # response positions are never fused
    _, loss = pair(batch)
    loss.backward()
    assert all(p.grad is not None for p in pair.fusers.parameters() if p.requires_grad and p.dim() > 1)
    assert all(p.grad is None for p in pair.receiver.model.parameters())
    assert all(p.grad is None for p in pair.sharers[0].model.parameters())


# ------------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path):
    pair = make_pair("llama", ("gemma", "qwen"))
    pair.save_pretrained(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / "c2c_config.json").read_text())
    assert config["format_version"] == 2 and config["receiver_shape"]["num_layers"] == 4  # 1 still loads (fusers/)
    assert [s["layer_map"] for s in config["sharers"]] == [[0, 0, 1, 2], [1, 2, 3, 4]]
    loaded = C2CModel.from_pretrained(tmp_path / "ckpt", receiver=tiny("llama"), sharers=[tiny("gemma"), tiny("qwen")])
    assert not any(module.training for module in loaded.modules())  # ready for inference: hard gates, no dropout
    assert loaded.config == pair.config
    for a, b in zip(pair.fusers.state_dict().values(), loaded.fusers.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(_last_logits(pair, PROMPTS), _last_logits(loaded, PROMPTS))


def test_checkpoint_for_another_pair_is_refused(tmp_path):
    make_pair("llama", ("gemma",)).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="another pair"):
        C2CModel.from_pretrained(tmp_path, receiver=tiny("qwen"), sharers=[tiny("gemma")])
    with pytest.raises(CheckpointError, match="1 sharer"):
        C2CModel.from_pretrained(tmp_path, receiver=tiny("llama"), sharers=[tiny("gemma"), tiny("qwen")])


def test_truncated_weights_are_refused(tmp_path):
    make_pair().save_pretrained(tmp_path)
    weights = tmp_path / "fuser.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        C2CModel.from_pretrained(tmp_path, receiver=tiny("llama"), sharers=[tiny("gemma")])


def test_newer_format_and_bad_configs_are_refused(tmp_path):
    make_pair().save_pretrained(tmp_path)
    path = tmp_path / "c2c_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(CheckpointError, match="newer"):
        C2CModel.from_pretrained(tmp_path, receiver=tiny("llama"), sharers=[tiny("gemma")])
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        C2CModel.from_pretrained(tmp_path, receiver=tiny("llama"), sharers=[tiny("gemma")])
    with pytest.raises(CheckpointError, match="not a c2c checkpoint"):
        C2CModel.from_pretrained(tmp_path / "nowhere", receiver=tiny("llama"), sharers=[tiny("gemma")])


def test_weights_with_missing_keys_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file
    make_pair().save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "fuser.safetensors"))
    weights.pop(next(iter(weights)))
    save_file(weights, str(tmp_path / "fuser.safetensors"))
    with pytest.raises(CheckpointError, match="missing"):
        C2CModel.from_pretrained(tmp_path, receiver=tiny("llama"), sharers=[tiny("gemma")])


def test_small_fuser_fixture_is_not_zero_init():
    assert SMALL_FUSER.zero_init is False


@pytest.mark.parametrize("receiver,sharers,receiver_input,position_free",
                         [("llama", ("gemma",), True, False), ("gemma", ("llama", "qwen"), True, False),
                          ("qwen", ("gemma",), False, False), ("llama", ("qwen",), True, True)])
def test_vectorised_inference_equals_the_per_layer_loop(receiver, sharers, receiver_input, position_free):
    pair = make_pair(receiver, sharers, fuser=dataclasses.replace(SMALL_FUSER, receiver_input=receiver_input,
                                                                  position_free=position_free))
    with torch.no_grad():
        for fuser in list(pair.layer_fusers())[::3]:
            fuser.gate_logits[0] = -1.0  # a mix of open and shut gates
    vectorised = _last_logits(pair, PROMPTS)
    pair.vectorize_max_tokens = 0
    torch.testing.assert_close(vectorised, _last_logits(pair, PROMPTS), rtol=1e-4, atol=1e-5)
    pair.vectorize_max_tokens = 1024
    with torch.no_grad():
        next(pair.layer_fusers()).value.input.weight.add_(1.0)  # changed weights are picked up, not a stale stack
    changed = _last_logits(pair, PROMPTS)
    assert not torch.allclose(changed, vectorised)
    pair.vectorize_max_tokens = 0
    torch.testing.assert_close(changed, _last_logits(pair, PROMPTS), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("receiver,sharer", PAIRS)
def test_a_position_free_fuser_reads_keys_without_rotary_and_writes_its_key_residual_rotated(receiver, sharer):
    pair = make_pair(receiver, (sharer,), fuser=dataclasses.replace(SMALL_FUSER, position_free=True))
    pair.vectorize_max_tokens = 0  # the per-layer loop, so a hook sees each fuser's inputs and outputs
    layer = pair.receiver.shape.num_layers - 1
    seen = []
    pair.fusers[0][layer].register_forward_hook(lambda module, inputs, output: seen.append((inputs, output)))
    batch = pair.prepare(["What is the capital of France?"])
    with torch.no_grad():
        fused = pair.prefill(batch)
        alone = pair.prefill(batch, fuse=False)
    ((sharer_key, _, receiver_key, _), (key_residual, _)), = seen  # one row, one fused run
    columns = (batch.positions[0][0] >= 0).nonzero()[:, 0]
    sources = batch.positions[0][0, columns]
    receiver_at = position_ids(batch.attention_mask)[0, columns][None]
    sharer_at = position_ids(batch.sharer_mask[0])[0, sources][None]
    source_layer = pair.config.sharers[0].layer_map[layer]
    raw_sharer = pair.sharer_caches(batch)[0][source_layer][0][:, :, sources]
    torch.testing.assert_close(sharer_key, Rotary(pair.sharers[0].model).remove(raw_sharer, source_layer, sharer_at))
    assert (sharer_key - raw_sharer).abs().max() > 1e-3  # the rotary really was removed
    rotary = Rotary(pair.receiver.model)
    own = kvcache.layer_kv(alone, layer)[0][:, :, columns]
    torch.testing.assert_close(receiver_key, rotary.remove(own, layer, receiver_at), rtol=1e-4, atol=1e-5)
    written = kvcache.layer_kv(fused, layer)[0][:, :, columns] - own
    torch.testing.assert_close(written, rotary.apply(key_residual, layer, receiver_at), rtol=1e-4, atol=1e-5)


def test_the_sharers_run_once_for_a_batch_read_twice():
    pair = make_pair()
    calls = count_sharer_runs(pair)
    batch = pair.prepare(PROMPTS)
    first = pair.sharer_caches(batch)
    assert pair.sharer_caches(batch) is first and calls == [0]
    pair.sharer_caches(pair.prepare(PROMPTS[::-1]))  # another batch: the sharers run again
    assert calls == [0, 0]


def test_the_sharer_store_serves_what_the_sharers_compute(tmp_path):
    from c2c.runtime.sharers import SharerKVStore
    pair = make_pair()
    batch = pair.prepare(PROMPTS)
    computed = pair.sharer_caches(batch)
    pair.sharer_cache_provider = SharerKVStore(tmp_path, 2**30)
    fresh = pair.sharer_caches(batch)  # computed, stored in float16
    pair.sharer_cache_provider = store = SharerKVStore(tmp_path, 2**30)
    stored = pair.sharer_caches(batch)  # read back from disk
    assert (store.hits, store.misses) == (len(PROMPTS), 0)
    mask = batch.sharer_mask[0].bool()[:, None, :, None]  # padding positions are never read
    for (k, v), (k_fresh, v_fresh), (k_stored, v_stored) in zip(computed[0], fresh[0], stored[0]):
        assert torch.equal(torch.where(mask, k_fresh, 0), torch.where(mask, k_stored, 0))
        torch.testing.assert_close(torch.where(mask, k_stored, 0), torch.where(mask, k, 0), rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(torch.where(mask, v_stored, 0), torch.where(mask, v, 0), rtol=1e-2, atol=1e-2)
    fused, alone = (kvcache.layer_kv(pair.prefill(batch, fuse=fuse), 1)[1] for fuse in (True, False))
    assert not torch.equal(fused, alone)  # the stored K/V are fused


def test_a_sharer_with_other_weights_under_the_same_name_gets_a_store_of_its_own(tmp_path, monkeypatch):
    """A sharer rebuilt in the same folder (its name unchanged) must not be served the old build's K/V."""
    from c2c.runtime.sharers import SharerKVStore
    monkeypatch.setattr("c2c.runtime.sharers.cache_dir", lambda: tmp_path)
    pair = make_pair()
    folder = SharerKVStore.for_pair(pair, 1).folder
    assert SharerKVStore.for_pair(pair, 1).folder == folder  # the same pair: the same store
    parameter = next(pair.sharers[0].model.parameters())  # the shared tiny sharer: restored bit for bit after
    original = parameter.detach().clone()
    try:
        with torch.no_grad():
            parameter.add_(1e-3)
        assert SharerKVStore.for_pair(pair, 1).folder != folder
    finally:
        with torch.no_grad():
            parameter.copy_(original)
    assert SharerKVStore.for_pair(pair, 1).folder == folder


def test_to_moves_what_the_pair_holds_and_refuses_a_dtype():
    import copy
    # private copies: tiny() shares its models between tests, and these go to the meta device
    pair = C2CModel.create(copy.deepcopy(tiny("llama")), [copy.deepcopy(tiny("gemma"))], SMALL_FUSER)
    meta = torch.device("meta")
    with pytest.raises(TypeError, match="takes a device"):
        pair.to(torch.bfloat16)
    assert pair.to(meta) is pair
    assert {p.device for m in (pair.receiver, *pair.sharers) for p in m.model.parameters()} == {meta}
    assert {p.device for p in pair.fusers.parameters()} == {meta}


def test_a_chunked_prefill_is_the_same_cache_and_yields_between_chunks():
    from c2c.runtime.passes import Chunks
    pair = make_pair()
    batch = pair.prepare(PROMPTS)
    whole = pair.prefill(batch)
    calls = []
    chunked = pair.prefill(batch, chunks=Chunks(3, lambda: calls.append(1)))
    for (k, v), (k_chunked, v_chunked) in zip(kvcache.all_kv(whole), kvcache.all_kv(chunked)):
        torch.testing.assert_close(k_chunked, k, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(v_chunked, v, rtol=1e-5, atol=1e-5)
    assert len(calls) >= (batch.prompt_length - 1) // 3  # at least one yield per 3 receiver tokens
    assert pair.generate(PROMPTS, max_new_tokens=4) == pair.generate(PROMPTS, max_new_tokens=4,
                                                                    prefill_chunks=Chunks(2, lambda: None))


@pytest.mark.parametrize("kind", ["llama", "gemma", "qwen"])
def test_a_prompt_cache_is_filled_without_the_lm_head(kind):
    """The K/V of a prefill come from the decoder alone (the LM head would read the whole vocabulary's weights
    for nothing) and equal those the whole model caches."""
    from c2c.runtime.passes import prompt_cache
    model = tiny(kind).model
    ids, mask = torch.tensor([[0, 5, 9, 13, 2], [7, 3, 4, 8, 1]]), torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    calls = []
    hook = model.get_output_embeddings().register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            cache = prompt_cache(model, ids, mask)
            assert calls == []
            whole = kvcache.full_length_cache()
            model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=position_ids(mask[:, :-1]),
                  cache=whole, use_cache=True)
            assert calls == [1]
    finally:
        hook.remove()
    for (k, v), (k_whole, v_whole) in zip(kvcache.all_kv(cache), kvcache.all_kv(whole), strict=True):
        assert torch.equal(k, k_whole) and torch.equal(v, v_whole)


def test_row_mask_marks_the_tokens_of_padded_rows():
    from c2c.core.tensors import row_mask
    assert row_mask([[7, 8, 9], [5]], left=True).tolist() == [[1, 1, 1], [0, 0, 1]]
    assert row_mask([[7, 8, 9], [5]], left=False).tolist() == [[1, 1, 1], [1, 0, 0]]
