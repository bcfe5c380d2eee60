"""Tiny randomly initialised models of three architectures, each with its own tokenizer, built in seconds.

- ``llama``: byte-level BPE tokenizer with a ChatML chat template (like SmolLM2), 4 layers, 2 KV heads x 8.
- ``gemma``: Metaspace/Unigram-free BPE tokenizer with a BOS and no chat template, sliding-window layers with
  a window of 8 (so prompts longer than the window exercise the full-length sharer cache), 3 layers, 1 KV x 16.
- ``qwen``: whitespace/char BPE with a different chat template, 5 layers, 2 KV heads x 4.
"""

from __future__ import annotations

import functools

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM)

from c2c.core.models import LoadedModel

CORPUS = [
    "Question: What is the capital of France?\nAnswer: Paris is the capital of France.",
    "The quick brown fox jumps over the lazy dog. Cats, dogs and birds are animals.",
    "Water boils at 100 degrees Celsius. Ice melts at zero degrees.",
    "你好，世界！ 机器学习 很有趣。 🙂 😀 emoji and CJK text: 東京 는 한국어",
    "Which planet is closest to the sun? Mercury. The earth orbits the sun once a year.",
    "def add(a, b): return a + b  # code with symbols {} [] () <> = + - * /",
] * 4

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QWEN_LIKE = ("{% for m in messages %}<<{{ m['role'] }}>> {{ m['content'] | trim }}<end>\n{% endfor %}"
             "{% if add_generation_prompt %}<<assistant>> {% endif %}")


def _byte_bpe(vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>", chat_template=CHATML)


def _metaspace_bpe(vocab_size: int) -> PreTrainedTokenizerFast:
    """Sentencepiece-like: '▁' marks spaces, BOS prepended, no chat template (like Gemma's base model)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " ")])
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"]))
    from tokenizers.processors import TemplateProcessing
    tokenizer.post_processor = TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", pad_token="<pad>")


def _char_bpe(vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.BPEDecoder()
    specials = ["[PAD]", "[UNK]", "<end>", "<<user>>", "<<assistant>>", "<<system>>"]
    tokenizer.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<end>", unk_token="[UNK]",
                                   pad_token="[PAD]", chat_template=QWEN_LIKE)


def _build(kind: str) -> LoadedModel:
    torch.manual_seed({"llama": 0, "gemma": 1, "qwen": 2}[kind])
    if kind == "llama":
        tokenizer = _byte_bpe(400)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
                             initializer_range=0.15,
                             tie_word_embeddings=True)
        model = LlamaForCausalLM(config)
    elif kind == "gemma":
        tokenizer = _metaspace_bpe(300)
        config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                  num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                                  sliding_window=8, layer_types=["sliding_attention", "sliding_attention",
                                                                 "full_attention"],
                                  max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=2)
        model = Gemma3ForCausalLM(config)
    elif kind == "qwen":
        tokenizer = _char_bpe(350)
        config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=5,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                             initializer_range=0.15,
                             tie_word_embeddings=False)
        model = Qwen2ForCausalLM(config)
    else:
        raise ValueError(kind)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.eval().requires_grad_(False)
    return LoadedModel(f"tiny-{kind}", model, tokenizer)


@functools.cache
def tiny(kind: str) -> LoadedModel:
    """Shared across tests: treat as read-only (the models are frozen)."""
    return _build(kind)
