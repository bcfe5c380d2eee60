"""Rotary removal and re-application: exact inverses, and keys moved between positions."""

import pytest
import torch

from c2c.core import cache as kvcache
from c2c.core.rotary import Rotary
from tiny import tiny

KINDS = ("llama", "gemma", "qwen")


@pytest.mark.parametrize("kind", KINDS)
def test_remove_then_apply_is_the_identity_on_every_layer(kind):
    model = tiny(kind)
    rotary = Rotary(model.model)
    shape = model.shape
    torch.manual_seed(0)
    keys = torch.randn(2, shape.num_kv_heads, 7, shape.head_dim)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [3, 4, 5, 9, 10, 11, 40]])
    for layer in range(shape.num_layers):
        plain = rotary.remove(rotary.apply(keys, layer, positions), layer, positions)
        torch.testing.assert_close(plain, keys, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(rotary.apply(keys, layer, positions), keys)  # it does rotate


def test_gemma_sliding_and_global_layers_rotate_differently():
    rotary = Rotary(tiny("gemma").model)
    keys = torch.randn(1, 1, 3, 16)
    positions = torch.tensor([[5, 50, 500]])
    assert not torch.allclose(rotary.apply(keys, 0, positions), rotary.apply(keys, 2, positions), atol=1e-3)
    torch.testing.assert_close(rotary.apply(keys, 0, positions), rotary.apply(keys, 1, positions))


@pytest.mark.parametrize("kind", KINDS)
def test_keys_computed_at_shifted_positions_and_moved_back_equal_the_originals(kind):
    model = tiny(kind)
    rotary = Rotary(model.model)
    ids = model.tokenizer("Water boils at 100 degrees Celsius.", return_tensors="pt")["input_ids"]
    length = ids.shape[1]
    shift = 37
    plain = kvcache.all_kv(model.model(input_ids=ids, cache=kvcache.full_length_cache(), use_cache=True).cache)
    shifted_positions = torch.arange(shift, shift + length)[None]
    shifted = kvcache.all_kv(model.model(input_ids=ids, position_ids=shifted_positions,
                                         cache=kvcache.full_length_cache(), use_cache=True).cache)
    original_positions = torch.arange(length)[None]
    for layer, ((keys, values), (shifted_keys, shifted_values)) in enumerate(zip(plain, shifted)):
        assert not torch.allclose(keys, shifted_keys, atol=1e-4)
        moved = rotary.move(shifted_keys, layer, shifted_positions, original_positions)
        torch.testing.assert_close(moved, keys, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(shifted_values, values, atol=2e-5, rtol=1e-4)  # values carry no position


def test_a_model_without_rotary_embedding_is_refused():
    with pytest.raises(ValueError, match="no rotary embedding"):
        Rotary(torch.nn.Linear(2, 2))
