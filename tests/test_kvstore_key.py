"""The sharer-cache providers recognise the last batch without reading its values (issue 33.3): reading them copied
the sharer ids from the GPU and waited for it on every prefill. The batch is recognised by its tensors themselves
and their in-place versions."""

import torch
from conftest import count_sharer_runs, make_pair

from c2c.inputs.batch import Batch
from c2c.runtime.sharers import SharerCaches

PROMPTS = ["What is the capital of France?", "hi 你好 🙂"]


class Counting(SharerCaches):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def compute(self, pair, batch, chunks=None):
        self.calls += 1
        return [[(batch.sharer_ids[0], batch.sharer_mask[0])]]


def meta_batch() -> Batch:
    """Tensors with no values at all: copying one to the CPU raises, so a key that reads values cannot be built."""
    ids = torch.empty(2, 5, dtype=torch.long, device="meta")
    return Batch(ids, torch.empty_like(ids), 5, [torch.empty_like(ids)], [torch.empty_like(ids)], [torch.empty_like(ids)])


def test_the_last_batch_is_recognised_without_reading_its_values():
    provider, batch = Counting(), meta_batch()
    first = provider(None, batch)
    assert provider(None, batch) is first and provider.calls == 1
    assert provider(None, batch.to("meta")) is first and provider.calls == 1  # .to its own device: the same tensors
    provider(None, meta_batch())  # another batch of the same shape: computed again
    assert provider.calls == 2


def test_a_batch_changed_in_place_or_prepared_again_is_computed_again():
    pair = make_pair()
    calls = count_sharer_runs(pair)
    batch = pair.prepare(PROMPTS)
    first = pair.sharer_caches(batch)
    assert pair.sharer_caches(batch.to(pair.device)) is first and len(calls) == 1
    pair.sharer_caches(pair.prepare(PROMPTS))  # the same prompts prepared again: another batch, the sharers run
    assert len(calls) == 2
    ids = batch.sharer_ids[0]
    ids[0, -1] = ids[1, -1]  # an in-place edit of the sharer's input
    changed = pair.sharer_caches(batch)
    assert len(calls) == 3
    again = pair.sharer_kv(0, ids, batch.sharer_mask[0])
    assert torch.equal(changed[0][-1][0], again[-1][0])  # the K/V of the edited input, not the stale ones


def test_a_batch_made_under_inference_mode_is_always_computed_afresh():
    pair = make_pair()
    with torch.inference_mode():
        batch = pair.prepare(PROMPTS)
        provider = Counting()
        provider(pair, batch)
        provider(pair, batch)  # inference tensors keep no version: never taken for the last batch
    assert provider.calls == 2
    with torch.inference_mode():
        fused = pair.generate(PROMPTS, max_new_tokens=3)
    assert fused == pair.generate(PROMPTS, max_new_tokens=3)
