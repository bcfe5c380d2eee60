"""A context read once (issue 32): ``pair.read_context`` gives what the text gives, saved or kept in memory, and
each distinct text is read by the sharer once; long contexts are read in chunks."""

import copy

import pytest
import torch
from test_context import CHOICES, CONTEXT, QUESTION, fitted, scores
from tiny import tiny

from c2c.translator import model as translation
from c2c.inputs.context import context_length
from c2c.evaluation.evaluate import EvalConfig, EvalSetup, run_eval
from c2c.model.pair import C2CModel
from c2c.inputs.translated_context import ContextMismatch, TranslatedContext

OTHER = "Tessa's pet is a cat."


@pytest.fixture
def pair():
    """The fitted tiny pair with an empty memo, counting the texts its sharer reads."""
    pair = fitted()
    pair.context_memo.clear()
    reads = []
    translate = C2CModel._translate

    def counting(self, index, texts):
        reads.extend(texts)
        return translate(self, index, texts)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(C2CModel, "_translate", counting)
        pair.reads = reads
        yield pair
    pair.context_memo.clear()


def answer(pair, context, tokens=6):
    return pair.generate(QUESTION, max_new_tokens=tokens, sharer_contexts=context)[0]


@torch.no_grad()  # inference (with grad, the translator's weights could be training: see the last tests)
def test_a_read_context_answers_exactly_as_its_text(pair):
    read = pair.read_context(CONTEXT)
    assert read.text == CONTEXT and read.tokens == context_length(pair.sharers[0].tokenizer, CONTEXT)
    assert [tuple(t.shape) for t in read.kv[0]] == [(2, read.tokens, 8)] * 2 and len(read.kv) == 4  # tiny llama
    assert torch.equal(scores(pair, [QUESTION], [read])[0], scores(pair, [QUESTION], [CONTEXT])[0])
    assert answer(pair, read) == answer(pair, CONTEXT)
    batch = pair.prepare([QUESTION, QUESTION], sharer_contexts=[read, OTHER])
    torch.testing.assert_close(pair.choice_scores(batch, [CHOICES] * 2)[1], scores(pair, [QUESTION], [OTHER])[0],
                               atol=1e-5, rtol=1e-5)  # a read context and a text side by side in one batch


def test_each_distinct_text_is_read_once(pair):
    pair.prepare([QUESTION] * 3, sharer_contexts=[CONTEXT, OTHER, CONTEXT])  # preparing reads nothing
    assert pair.reads == []
    batch = pair.prepare([QUESTION] * 3, sharer_contexts=[CONTEXT, OTHER, CONTEXT])
    with torch.no_grad():  # (with grad, the translator's weights could be training: every text read afresh)
        pair.choice_scores(batch, [CHOICES] * 3)
    assert pair.reads == [CONTEXT, OTHER]  # one batch, each text once
    answer(pair, CONTEXT)
    pair.read_context(OTHER)
    assert pair.reads == [CONTEXT, OTHER] and (pair.context_memo.misses, pair.context_memo.hits) == (2, 2)
    pair.context_memo.max_bytes = 0  # nothing kept: every question reads its context again
    pair.context_memo.clear()
    answer(pair, CONTEXT)
    answer(pair, CONTEXT)
    assert pair.reads == [CONTEXT, OTHER, CONTEXT, CONTEXT]
    pair.context_memo.max_bytes = 1 << 30


def test_a_saved_context_loads_and_answers_the_same(pair, tmp_path):
    read = pair.read_context(CONTEXT)
    path = read.save(tmp_path / "notes.safetensors")
    loaded = TranslatedContext.load(path)
    assert loaded.text == CONTEXT and loaded.identity == pair.context_identity(0)
    assert all(torch.equal(a, b) for pair_kv, other in zip(read.kv, loaded.kv) for a, b in zip(pair_kv, other))
    pair.context_memo.clear()
    pair.reads.clear()
    assert answer(pair, loaded) == answer(pair, CONTEXT) and pair.reads == [CONTEXT]  # the file: no sharer pass
    with pytest.raises(ValueError, match=r"saved as \.safetensors.*notes\.safetensors"):
        read.save(tmp_path / "notes.pt")


def test_a_context_read_by_another_pair_or_translator_is_refused(pair, tmp_path):
    mine = pair.read_context(CONTEXT)
    other_pair = fitted("llama", "llama")
    with pytest.raises(ContextMismatch, match=r"sharer: read with tiny-llama, this pair has tiny-gemma.*read the text "
                                              r"again"):
        pair.prepare([QUESTION], sharer_contexts=[other_pair.read_context(CONTEXT)])
    changed = C2CModel(pair.receiver, pair.sharers, copy.deepcopy(pair.config))
    changed.translators.load_state_dict(pair.translators.state_dict())
    assert changed.context_identity(0) == pair.context_identity(0)  # same weights: the same translator
    with torch.no_grad():
        changed.translators[0].maps[0].weight.mul_(2)
    with pytest.raises(ContextMismatch, match=r"translator: read with [0-9a-f]{16}, this pair has [0-9a-f]{16}"):
        changed.prepare([QUESTION], sharer_contexts=[mine])
    receiver_only = C2CModel.create(tiny("llama"), [tiny("gemma")], chat_template=False)
    with pytest.raises(ValueError, match="pair without a context translator; give its text"):
        receiver_only.prepare([QUESTION], sharer_contexts=[mine])


def test_damaged_or_foreign_files_are_clear_errors(pair, tmp_path):
    with pytest.raises(ValueError, match="does not exist; write one with c2c read-context"):
        TranslatedContext.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="is not a readable translated context"):
        TranslatedContext.load(junk)
    pair.save_pretrained(tmp_path / "fuser")
    with pytest.raises(ValueError, match="not a translated context"):
        TranslatedContext.load(tmp_path / "fuser" / "fuser.safetensors")
    saved = pair.read_context(CONTEXT).save(tmp_path / "cut.safetensors")
    saved.write_bytes(saved.read_bytes()[:300])
    with pytest.raises(ValueError, match="is not a readable translated context"):
        TranslatedContext.load(saved)


def test_a_long_context_is_read_in_chunks_as_in_one_pass(monkeypatch):
    """The tiny Gemma sharer has a sliding window of 8; a 60-token context read 5 tokens at a time gives the K/V of
    one pass (every layer, every position)."""
    sharer = tiny("gemma")
    ids = torch.randint(3, 250, (2, 60))
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # left padding
    whole = translation.position_free_kv(sharer, ids, mask)
    monkeypatch.setattr(translation, "READ_CHUNK_TOKENS", 5)
    chunked = translation.position_free_kv(sharer, ids, mask)
    for (k, v), (kc, vc) in zip(whole, chunked):
        torch.testing.assert_close(kc[0], k[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(kc[1, :, 7:], k[1, :, 7:], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(vc[1, :, 7:], v[1, :, 7:], atol=1e-5, rtol=1e-4)


def test_while_the_translator_trains_each_text_is_read_afresh_with_its_graph(pair):
    pair.translators.requires_grad_(True)
    try:
        (read,) = pair.read_contexts(0, [CONTEXT])
        assert read.kv[0][0].requires_grad and len(pair.context_memo.entries) == 0
        with torch.no_grad():
            (kept,) = pair.read_contexts(0, [CONTEXT])
        assert not kept.kv[0][0].requires_grad and len(pair.context_memo.entries) == 1
    finally:
        pair.translators.requires_grad_(False)


def test_an_evaluation_reads_each_distinct_context_once(pair, tmp_path):
    """The translated method and its shuffled control read the same contexts (the control another item's): six
    items, six distinct contexts, six readings."""
    setup = EvalSetup(pair)
    run_eval(EvalConfig(["synthetic-1fact"], ["c2c-translated", "c2c-translated-shuffled"], scoring="cloze", limit=6,
                        out=str(tmp_path)), setup)
    assert len(pair.reads) == len(set(pair.reads)) == 6
