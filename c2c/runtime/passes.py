"""The receiver's forward passes that every method shares: extending a cache over new prompt tokens, scoring
continuations after a prefilled prompt, and decoding from it. The receiver alone and C2C differ only in the
cache these read (fused or not), never in this code."""

from __future__ import annotations

import itertools
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
    decoder = cache_filler(model)
    head = {"logits_to_keep": 1} if decoder is model else {}
    for start in range(0, input_ids.shape[1], size):
        stop = start + size
        decoder(input_ids=input_ids[:, start:stop], attention_mask=attention_mask[:, :cached + stop],
                position_ids=positions[:, start:stop], cache=cache, use_cache=True, **head)
        if chunks is not None:
            chunks.between()


def cache_filler(model: nn.Module) -> nn.Module:
    """What fills a causal LM's cache: its decoder without the LM head, which even for one position reads the
    whole vocabulary's weights (Gemma 3's 262k x 640: half the time of a short prompt's pass on a CPU); the
    model itself where it names no decoder."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    return decoder if isinstance(decoder, nn.Module) else model


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
    log-probabilities, token count, greedy: every token is the argmax), each (R,).

    Where the model's attention takes a custom mask (``packed_masks``), each prompt's continuations run packed in
    one row after its last token, each attending to the prompt and to itself only; otherwise one row per
    continuation, the prompt's cache repeated for each. Either way each log-probability is the one the
    continuation gets alone."""
    masks = packed_masks(model)
    if masks is None:
        logits, targets, owners = _row_pass(model, tokenizer, prompt_ids, prompt_mask, cache, rows, per_prompt)
    else:
        logits, targets, owners = _packed_pass(model, masks, prompt_ids, prompt_mask, cache, rows, per_prompt)
    logprobs = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[:, None])[:, 0]  # (T,)
    missed = (logits.argmax(-1) != targets).float()
    count = len(rows)
    sums = logprobs.new_zeros(count).index_add(0, owners, logprobs)
    counts = torch.bincount(owners, minlength=count).to(logprobs.dtype)
    return sums, counts, missed.new_zeros(count).index_add(0, owners, missed) == 0


def _row_pass(model, tokenizer, prompt_ids, prompt_mask, cache, rows, per_prompt):
    """One row per continuation after its prompt's cache: (T, V) logits predicting each of the T continuation
    tokens, the tokens (T,), and the continuation each belongs to (T,)."""
    counts = torch.tensor(list(per_prompt), device=prompt_ids.device)
    last = prompt_ids[:, -1].repeat_interleave(counts)  # (R,)
    pad = tokenizer.pad_token_id or 0
    tail = torch.cat([last[:, None], pad_rows(rows, pad, left=False).to(last.device)], dim=1)  # (R, 1 + W)
    tail_mask = pad_rows([[1] * (1 + len(r)) for r in rows], 0, left=False).to(tail.device)
    mask = torch.cat([prompt_mask[:, :-1].repeat_interleave(counts, dim=0), tail_mask], dim=1)
    prefix = prompt_ids.shape[1] - 1
    logits = model(input_ids=tail, attention_mask=mask, position_ids=position_ids(mask)[:, prefix:],
                   cache=kvcache.repeat_rows(cache, counts), use_cache=True).logits  # (R, 1 + W, V)
    valid = tail_mask[:, 1:].bool()  # (R, W)
    owners = torch.arange(len(rows), device=tail.device)[:, None].expand_as(valid)
    return logits[:, :-1][valid], tail[:, 1:][valid], owners[valid]


ATTENTION_TYPES = ("full_attention", "sliding_attention")  # the layer kinds a packed pass can mask


def packed_masks(model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object] | None:
    """How to hand a (B, 1, L, N) boolean attention pattern to ``model``'s layers, as it takes an already built
    mask (``masking_utils``: a 4D mask passes as it is): None where it cannot take one (attention other than
    SDPA or eager, chunked or linear layers). The pattern comes with the query and key positions (B, L), (B, N):
    sliding-window layers get it cut to their window, as the model's own masks are."""
    config = model.config.get_text_config(decoder=True)
    implementation = getattr(config, "_attn_implementation", None)
    layer_types = getattr(config, "layer_types", None)
    if implementation not in ("sdpa", "eager") or getattr(config, "attention_chunk_size", None) \
            or any(kind not in ATTENTION_TYPES for kind in layer_types or ()):
        return None
    window = getattr(config, "sliding_window", None)
    dtype = model.dtype

    def form(allowed: torch.Tensor) -> torch.Tensor:  # SDPA reads booleans, eager adds the mask to its scores
        if implementation == "sdpa":
            return allowed
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed,
                                                                                          torch.finfo(dtype).min)

    def masks(allowed: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> object:
        windowed = allowed & (queries[:, None, :, None] - keys[:, None, None, :] < window) if window else allowed
        if layer_types is None:  # one kind of layer: windowed where the model has a window
            return form(windowed)
        return {kind: form(windowed if kind == "sliding_attention" else allowed) for kind in set(layer_types)}
    return masks


def _packed_pass(model, masks, prompt_ids, prompt_mask, cache, rows, per_prompt):
    """Continuations packed, per prompt [last, c_1..., c_2..., ...]: token t of c_j at position last + 1 + t,
    attending to its prompt, the prompt's last token and c_j's first t tokens. Either every prompt's in one row,
    their caches laid end to end (no padding), or each prompt's in its own row (no attention across prompts'
    caches), whichever costs less (``_prompts_per_row``). Returns what ``_row_pass`` returns."""
    device, (batch, width) = prompt_ids.device, prompt_ids.shape
    cached = width - 1
    starts = [0, *itertools.accumulate(per_prompt)]  # prompt b's continuations: rows[starts[b]:starts[b + 1]]
    per_row = _prompts_per_row(model, [1 + sum(map(len, rows[starts[b]:starts[b + 1]])) for b in range(batch)],
                               cached)
    packed = {key: [[] for _ in range(batch // per_row)] for key in ("tokens", "prompt", "segment", "offset")}
    sources, targets, owners = [], [], []  # per continuation token: (packed row, index) predicting it; token; row
    for prompt in range(batch):
        group, within = divmod(prompt, per_row)
        last = len(packed["tokens"][group])  # where the prompt's last token goes, which every choice reads
        entries = [(int(prompt_ids[prompt, -1]), 0, 0)]  # (token, segment: 0 or the choice's number, offset)
        for choice, row in enumerate(range(starts[prompt], starts[prompt + 1]), start=1):
            for t, token in enumerate(rows[row]):
                sources.append((group, last + len(entries) - 1 if t else last))
                targets.append(token)
                owners.append(row)
                entries.append((token, choice, 1 + t))
        for key, values in zip(("tokens", "segment", "offset"), zip(*entries)):
            packed[key][group].extend(values)
        packed["prompt"][group].extend([within] * len(entries))
    ids, within, segment, offset = (pad_rows(packed[key], -1 if key in ("prompt", "segment") else 0, left=False)
                                    .to(device) for key in ("tokens", "prompt", "segment", "offset"))
    ids, groups = ids.clamp(min=0), ids.shape[0]  # (G, L); padding: prompt and segment -1, attends to itself only
    prompt_positions = position_ids(prompt_mask).view(-1, per_row, width)  # (G, m, P)
    rows_index = torch.arange(groups, device=device)[:, None]
    queries = prompt_positions[rows_index, within.clamp(min=0), -1] + offset  # (G, L)
    same = within[:, :, None] == within[:, None, :]
    own = same & ((segment[:, None, :] == 0) | (segment[:, :, None] == segment[:, None, :])) \
        & (offset[:, None, :] <= offset[:, :, None])  # (G, L, L): its prompt's last token, its own earlier tokens
    own |= torch.eye(ids.shape[1], dtype=torch.bool, device=device)  # padding attends to itself
    owner = torch.arange(per_row, device=device).repeat_interleave(cached)  # (m * (P - 1),) prompt of each column
    real = prompt_mask[:, :-1].reshape(groups, -1).bool()  # (G, m * (P - 1))
    on_prompt = (within[:, :, None] == owner[None, None, :]) & real[:, None, :]  # (G, L, m * (P - 1))
    allowed = torch.cat([on_prompt, own], dim=-1)[:, None]  # (G, 1, L, m * (P - 1) + L)
    keys = torch.cat([prompt_positions[:, :, :-1].reshape(groups, -1), queries], dim=-1)
    joined = kvcache.cache_from_kv([tuple(x.reshape(groups, per_row, *x.shape[1:]).transpose(1, 2)
                                          .reshape(groups, x.shape[1], per_row * cached, x.shape[-1])
                                          for x in kv) for kv in kvcache.all_kv(cache)])  # (G, H, m * (P - 1), d)
    logits = model(input_ids=ids, attention_mask=masks(allowed, queries, keys), position_ids=queries, cache=joined,
                   use_cache=True).logits  # (G, L, V)
    where = torch.tensor(sources, device=device)
    return (logits[where[:, 0], where[:, 1]], torch.tensor(targets, device=device),
            torch.tensor(owners, device=device))


def _prompts_per_row(model: nn.Module, lengths: Sequence[int], cached: int) -> int:
    """1 (a row per prompt) or all B (one row) for ``_packed_pass``: whichever costs fewer operations, counting
    per token ~ the layers' weights and per (query, key) pair what attention adds, (4h + 3i) / 2 : 1 of them."""
    config = model.config.get_text_config(decoder=True)
    hidden = config.hidden_size
    pair_cost = 2 / (4 * hidden + 3 * (getattr(config, "intermediate_size", None) or 4 * hidden))
    batch, longest, total = len(lengths), max(lengths), sum(lengths)
    one_each = batch * longest * (1 + pair_cost * (cached + longest))
    together = total * (1 + pair_cost * (batch * cached + total))
    return batch if together < one_each else 1


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
