"""The receiver's forward passes that every method shares: extending a cache over new prompt tokens, scoring
continuations after a prefilled prompt, and decoding from it. The receiver alone and C2C differ only in the
cache these read (fused or not), never in this code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from transformers import DynamicCache

from ..core import cache as kvcache
from ..core.tensors import pad_rows, position_ids


@dataclass
class Chunks:
    """A prefill run in pieces of at most ``size`` tokens, calling ``between()`` after each: the server hands the
    model to other requests there, so a long prompt does not hold it for its whole length."""

    size: int
    between: Callable[[], None]


def extend_cache(model: nn.Module, cache: DynamicCache, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 positions: torch.Tensor, chunks: Chunks | None = None) -> None:
    """Run ``input_ids`` (B, n) over ``cache`` in place; ``attention_mask`` (B, N + n) covers the cached columns
    and the new ones, ``positions`` (B, n) are the new tokens' positions. With ``chunks``, piece by piece."""
    size = max(chunks.size if chunks is not None else input_ids.shape[1], 1)
    cached = attention_mask.shape[1] - input_ids.shape[1]
    for start in range(0, input_ids.shape[1], size):
        stop = start + size
        model(input_ids=input_ids[:, start:stop], attention_mask=attention_mask[:, :cached + stop],
              position_ids=positions[:, start:stop], cache=cache, use_cache=True, logits_to_keep=1)
        if chunks is not None:
            chunks.between()


def model_kv(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunks: Chunks | None = None
             ) -> list[kvcache.KV]:
    """A model's K/V of left-padded ``input_ids`` (B, N), every position of every layer kept: per layer
    (B, H, N, d), rotary applied as the model caches them."""
    cache = kvcache.full_length_cache()
    extend_cache(model, cache, input_ids, attention_mask, position_ids(attention_mask), chunks)
    return kvcache.all_kv(cache)


def prompt_cache(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> DynamicCache:
    """A full-length cache of left-padded prompts (B, P) minus their last token: P - 1 positions."""
    cache = kvcache.full_length_cache()
    mask = attention_mask[:, :-1]
    if mask.shape[1]:
        extend_cache(model, cache, input_ids[:, :-1], mask, position_ids(mask))
    return cache


def continuation_logprobs(model: nn.Module, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                          cache: DynamicCache, continuations: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-likelihood of each prompt's continuations, all in one batch: (sum of log-probabilities, token count),
    each (R,) over the R continuations in order. Differentiable when grad is enabled (the choice objective).

    ``prompt_ids``/``prompt_mask`` (B, P) are the left-padded prompts and ``cache`` holds their first P - 1
    positions (as ``C2CModel.prefill`` leaves them); each continuation runs after its prompt's last token.
    """
    sums, counts, _ = token_continuations(model, tokenizer, prompt_ids, prompt_mask, cache,
                                          continuation_rows(tokenizer, continuations),
                                          [len(texts) for texts in continuations])
    return sums, counts


def continuation_rows(tokenizer, continuations: Sequence[Sequence[str]]) -> list[list[int]]:
    """Every prompt's continuations as token rows, in order, each tokenized on its own (no special tokens)."""
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for texts in continuations for text in texts]
    if any(not row for row in rows):
        raise ValueError("a continuation is empty; every choice needs text to score")
    return rows


def token_continuations(model: nn.Module, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                        cache: DynamicCache, rows: Sequence[Sequence[int]], per_prompt: Sequence[int]
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``continuation_logprobs`` on token rows, ``per_prompt[i]`` of them after prompt i: (sum of
    log-probabilities, token count, greedy: every token is the argmax), each (R,)."""
    counts = torch.tensor(list(per_prompt), device=prompt_ids.device)
    last = prompt_ids[:, -1].repeat_interleave(counts)  # (R,)
    pad = tokenizer.pad_token_id or 0
    tail = torch.cat([last[:, None], pad_rows(rows, pad, left=False).to(last.device)], dim=1)  # (R, 1 + W)
    tail_mask = pad_rows([[1] * (1 + len(r)) for r in rows], 0, left=False).to(tail.device)
    mask = torch.cat([prompt_mask[:, :-1].repeat_interleave(counts, dim=0), tail_mask], dim=1)
    prefix = prompt_ids.shape[1] - 1
    logits = model(input_ids=tail, attention_mask=mask, position_ids=position_ids(mask)[:, prefix:],
                   cache=kvcache.repeat_rows(cache, counts), use_cache=True).logits.float()  # (R, 1 + W, V)
    distribution = torch.log_softmax(logits[:, :-1], dim=-1)  # (R, W, V)
    logprobs = distribution.gather(-1, tail[:, 1:, None]).squeeze(-1)  # (R, W)
    valid = tail_mask[:, 1:].to(logprobs.dtype)
    greedy = ((distribution.argmax(-1) == tail[:, 1:]) | (valid == 0)).all(-1)
    return (logprobs * valid).sum(-1), valid.sum(-1), greedy


def per_character(sums: torch.Tensor, choices: Sequence[Sequence[str]]) -> list[torch.Tensor]:
    """(R,) log-likelihood sums over all prompts' choices -> per prompt, log-likelihood per character (k_i,)."""
    characters = torch.tensor([len(text) for texts in choices for text in texts], device=sums.device)
    return list((sums / characters).split([len(texts) for texts in choices]))


def last_token_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: DynamicCache
                      ) -> torch.Tensor:
    """(B, V) float32 logits after the last token of left-padded prompts (B, P) whose first P - 1 positions are in
    ``cache`` (left as it is)."""
    positions = position_ids(attention_mask)[:, -1:]
    return model(input_ids=input_ids[:, -1:], attention_mask=attention_mask, position_ids=positions,
                 cache=kvcache.repeat_rows(cache, 1), use_cache=True).logits[:, -1].float()


def eos_ids(model: nn.Module) -> set[int]:
    """The tokens that end a model's generation (its generation config may name one, several or none)."""
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def greedy_texts(model: nn.Module, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 cache: DynamicCache, max_new_tokens: int) -> list[tuple[str, int]]:
    """Greedy continuation of each left-padded prompt (B, P) after ``cache`` (see ``decode``): (text, new tokens,
    counting the end-of-sequence token where a row stops early), each row as it would read decoded alone:
    ``generate`` pads the rows that stopped while others go on."""
    new = decode(model, tokenizer, input_ids, attention_mask, cache, max_new_tokens, do_sample=False)
    stops, results = eos_ids(model), []
    for row in new.tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
        results.append((tokenizer.decode(row[:end], skip_special_tokens=True), end))
    return results


def decode(model: nn.Module, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: DynamicCache,
           max_new_tokens: int, stop: Sequence[str] | None = None, **generate_kwargs) -> torch.Tensor:
    """New token ids (B, n) decoded by the stock ``generate`` after left-padded prompts (B, P), from ``cache``:
    their first P - 1 positions (a prefill), or empty. ``stop``: strings that end a row; ``generate_kwargs``:
    sampling, a streamer, stopping criteria..."""
    if stop:
        generate_kwargs.update(stop_strings=list(stop), tokenizer=tokenizer)
    output = model.generate(input_ids=input_ids, attention_mask=attention_mask, cache=cache,
                            max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **generate_kwargs)
    return output[:, input_ids.shape[1]:]
