"""End to end on the real default pair (SmolLM2-135M-Instruct <- Gemma-3-270m), converted once and cached."""

from pathlib import Path

import pytest
import torch

from c2c.core import cache as kvcache
from c2c.data import cloze_continuations, load_benchmark, mc_prompt
from c2c.model.inspection import inspect_pair
from c2c.core.models import load_model
from c2c.model.pair import C2CModel

pytestmark = pytest.mark.real_pair
SHIPPED = Path(__file__).parents[1] / "fusers" / "default_pair"
SHIPPED_CHAT = Path(__file__).parents[1] / "fusers" / "default_pair_chat"
SHIPPED_HANDOFF = Path(__file__).parents[1] / "fusers" / "context_handoff"


@pytest.fixture(scope="module")
def models():
    return load_model("smollm2-135m-instruct"), load_model("gemma3-270m")


def test_built_in_names_load_with_the_facts_we_rely_on(models):
    receiver, sharer = models
    assert (receiver.shape.num_layers, receiver.shape.num_kv_heads, receiver.shape.head_dim,
            receiver.shape.vocab_size) == (30, 3, 64, 49152)
    assert (sharer.shape.num_layers, sharer.shape.num_kv_heads, sharer.shape.head_dim,
            sharer.shape.vocab_size) == (18, 1, 256, 262144)
    assert receiver.tokenizer.chat_template and not sharer.tokenizer.chat_template


def test_inspect_reports_the_pair(models):
    report = inspect_pair(C2CModel.create(*models[:1], [models[1]]))
    assert report["sharers"][0]["layer_map"] == [0] * 13 + list(range(1, 18))
    quality = report["sharers"][0]["alignment_quality"]
    assert quality["exact"] + quality["approximate"] == quality["message_tokens"] > 50
    assert quality["exact"] > quality["approximate"]


def test_untrained_fuser_generates_exactly_like_the_receiver(models):
    pair = C2CModel.create(models[0], [models[1]])
    prompts = ["What is the boiling point of water at sea level?", "Name the largest planet."]
    fused = pair.generate(prompts, max_new_tokens=8)
    assert fused == pair.generate(prompts, max_new_tokens=8, fuse=False)
    assert all(text.strip() for text in fused)


def test_long_prompt_keeps_sharer_positions_beyond_the_sliding_window(models):
    pair = C2CModel.create(models[0], [models[1]])
    prompt = " ".join(f"Fact {i}: the number {i} is {'even' if i % 2 == 0 else 'odd'}." for i in range(90))
    batch = pair.prepare([prompt])
    assert batch.sharer_ids[0].shape[1] > 600
    kv = pair.sharer_caches(batch)[0]
    assert all(k.shape[2] == batch.sharer_ids[0].shape[1] for k, _ in kv)  # sliding layers keep everything
    positions = batch.positions[0][0]
    earliest = positions[positions >= 0][:50]
    assert len(earliest) == 50 and (earliest < batch.sharer_ids[0].shape[1] - 511).all()
    assert all(k[0, :, earliest].abs().sum() > 0 for k, _ in kv)  # a 511-position sliding cache would lack these


def test_shipped_fuser_loads_and_changes_the_answer_scores(models):
    pair = C2CModel.from_pretrained(SHIPPED, receiver=models[0], sharers=[models[1]])
    assert pair.gate_logits().gt(0).any()
    batch = pair.prepare(["Question: Which gas do plants absorb from the air?\nAnswer:"])
    fused, alone = pair.prefill(batch, fuse=True), pair.prefill(batch, fuse=False)
    assert any(not torch.equal(a, b) for layer in range(30)
               for a, b in zip(kvcache.layer_kv(fused, layer), kvcache.layer_kv(alone, layer)))


def test_shipped_chat_fuser_answers_in_free_text(models):
    """The instruction-data fuser behind `c2c generate` and `c2c chat` keeps the receiver's free text intact."""
    pair = C2CModel.from_pretrained(SHIPPED_CHAT, receiver=models[0], sharers=[models[1]])
    assert pair.config.chat_template and pair.gate_logits().gt(0).any()
    question = "Which gas do plants absorb from the air?"
    fused = pair.generate(question, max_new_tokens=16)[0]
    assert "carbon dioxide" in fused.lower()
    assert fused != pair.generate(question, max_new_tokens=16, fuse=False)[0]


def test_shipped_translator_answers_from_a_context_the_receiver_never_read(models):
    """The README's context-handoff example; and on 24 seeded synthetic test items (names and values never seen
    in fitting) the receiver picks the right choice far more often from the item's own context than from another
    item's (the full test in results/context_handoff/trained: 77.4% vs 37.4% of 500)."""
    pair = C2CModel.from_pretrained(SHIPPED_HANDOFF, receiver=models[0], sharers=[models[1]])
    question = "Question: What is Zelda's pet?\nAnswer:"
    assert "turtle" in pair.generate(question, sharer_contexts="Zelda's pet is a turtle.\n", max_new_tokens=8)[0]
    assert "turtle" not in pair.generate(question, max_new_tokens=8, fuse=False)[0]
    items = load_benchmark("synthetic-1fact", "test", limit=24, seed=0).items
    prompts, choices = [mc_prompt(item, "cloze") for item in items], [cloze_continuations(item) for item in items]

    def correct(contexts):
        batches = [pair.prepare(prompts[s:s + 8], sharer_contexts=contexts[s:s + 8]) for s in range(0, 24, 8)]
        scores = [row for s, batch in zip(range(0, 24, 8), batches) for row in pair.choice_scores(batch, choices[s:s + 8])]
        return sum(int(row.argmax()) == item.answer for row, item in zip(scores, items))
    own = correct([item.context for item in items])
    shuffled = correct([items[(k + 1) % 24].context for k in range(24)])
    assert own >= 16 and own >= shuffled + 6, (own, shuffled)
