"""c2c inside lm-evaluation-harness: the model type ``c2c`` (``pip install 'c2c[lm-eval]'``).

lm-eval 0.4.x has no plugin hook that imports a third-party model when its command line starts, so the model
is registered when this module is imported. From the shell run lm-eval through this module::

    python -m c2c.lm_eval_harness --model c2c --model_args fuser=fusers/default_pair[,fuse=False] --tasks arc_easy

and from Python pass ``C2CLM(...)`` to ``lm_eval.simple_evaluate(model=...)`` (or import this module first
and name ``model="c2c"``).

What each request type runs, through the same calls ``c2c eval`` makes (``pair.prepare``, ``pair.prefill``, the
scoring of ``c2c.runtime.passes.continuation_logprobs``):

- ``loglikelihood``: the context is the prompt, rendered raw or with the receiver's chat template as the
  fuser's config says; the sharer reads it, the receiver prefills it over the fused cache (``fuse=False``: the
  receiver alone, same code), and the continuation is tokenized on its own and scored after the prompt's last
  token, as ``c2c eval``'s cloze scores are. Requests sharing a context (one per choice) share one prefill, and
  a request asked twice (the same item in two tasks) is scored once, its context's distinct continuations in
  one batch as ``c2c eval`` batches an item's choices (so with ``batch_size=1`` the scores are its, bit for bit).
- ``loglikelihood_rolling``: the receiver alone (fusion off, whatever ``fuse`` says), over the raw text in
  lm-eval's rolling windows. Every scored token is also prompt here, and the receiver computes a token's
  logits before the run it sits in is fused, so there is no fused prompt that precedes the text to score.
- ``generate_until``: ``pair.generate`` (greedy unless the task asks to sample), cut at the first stop string.

``write_task`` writes c2c multiple-choice items as an lm-eval task whose ``acc_norm`` is ``c2c eval``'s cloze pick.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import torch
import yaml
from tqdm import tqdm

import lm_eval.models  # noqa: F401  the built-in models first: get_model fills only an empty registry with them
from lm_eval import utils as lm_utils
from lm_eval.api.model import LM
from lm_eval.api.registry import MODEL_REGISTRY, register_model

from .core.models import max_positions
from .data import MCItem, cloze_continuations, mc_prompt
from .model.pair import C2CModel
from .runtime.passes import prompt_cache, token_continuations


def _batch_size(value) -> int:
    if value is None:
        return 1
    if str(value).startswith("auto"):
        return 8  # lm-eval's "auto": a fixed 8 prompts a batch here (no memory probing)
    return max(1, int(value))


class C2CLM(LM):
    """A C2C pair as an lm-eval model. ``fuser``: a fuser folder or Hub id (or give ``pair``, a loaded
    ``C2CModel``); ``fuse=False`` is the receiver baseline through the same code; ``batch_size`` prompts are
    prefilled together; ``max_length`` bounds the rolling windows of ``loglikelihood_rolling``."""

    def __init__(self, fuser: str | None = None, fuse: bool = True, dtype: str = "float32", device: str = "auto",
                 batch_size: int | str | None = 1, max_length: int = 2048, revision: str | None = None,
                 pair: C2CModel | None = None, max_batch_size: int | None = None):
        super().__init__()
        if (fuser is None) == (pair is None):
            raise ValueError("give the c2c model one of fuser=DIR_OR_HUB_ID (model_args) or pair=C2CModel")
        self.pair = pair if pair is not None else C2CModel.from_pretrained(fuser, dtype=dtype, device=device,
                                                                           revision=revision)
        self.fuse = fuse if isinstance(fuse, bool) else str(fuse).lower() in ("1", "true", "yes")
        self.batch_size = _batch_size(batch_size)
        self.max_length = min(int(max_length), max_positions(self.pair.receiver))
        self._device = self.pair.device

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "C2CLM":
        return cls.create_from_arg_obj(lm_utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> "C2CLM":
        """``--model_args`` win over lm-eval's own ``--batch_size``/``--device``; its default device (cuda:0)
        means ``auto`` on a machine without CUDA."""
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        if str(extra.get("device", "")).startswith("cuda") and not torch.cuda.is_available():
            extra.pop("device")
        return cls(**arg_dict, **extra)

    # ------------------------------------------------------------------------------------------ requests
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self._split(*request.args) for request in requests]
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        # context -> its distinct continuations, in order -> the requests asking for each (several tasks may ask)
        by_context: dict[str, dict[str, list[int]]] = {}
        for index, (context, continuation) in enumerate(pairs):
            if not continuation:
                results[index] = (0.0, True)
            elif not context.strip():  # nothing for a sharer to read: the receiver after its prefix token
                results[index] = self._receiver_tokens([self._prefix_token()], self._encode(continuation))
            else:
                by_context.setdefault(context, {}).setdefault(continuation, []).append(index)
        contexts = list(by_context)
        for start in tqdm(range(0, len(contexts), self.batch_size), desc="c2c loglikelihood", disable=disable_tqdm):
            chunk = contexts[start:start + self.batch_size]
            sums, greedy = self._fused_scores(chunk, [list(by_context[c]) for c in chunk])
            asked = [indices for context in chunk for indices in by_context[context].values()]
            for indices, total, flag in zip(asked, sums.tolist(), greedy.tolist()):
                for i in indices:
                    results[i] = (total, bool(flag))
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = []
        for request in requests:
            text = request.args[0]
            windows = map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                token_list=self._encode(text), prefix_token=self._prefix_token(), max_seq_len=self.max_length,
                context_len=1))
            total = sum(self._receiver_tokens(context, predicted)[0] for context, predicted in windows)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            results.append(total)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}  # requests with the same generation settings are batched together
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        for indices in groups.values():
            settings = dict(requests[indices[0]].args[1] or {})
            until = settings.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = next((int(settings.pop(k)) for k in ("max_gen_toks", "max_new_tokens", "max_tokens")
                            if k in settings), 256)
            sampling = {k: settings[k] for k in ("temperature", "top_p", "top_k") if k in settings}
            do_sample = bool(settings.get("do_sample", False)) and sampling.get("temperature", 1.0) > 0
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                texts = self.pair.generate([requests[i].args[0] for i in chunk], max_new_tokens=max_new,
                                           stop=[s for s in until if s] or None, fuse=self.fuse,
                                           do_sample=do_sample, **(sampling if do_sample else {}))
                for i, text in zip(chunk, texts):
                    for stop in until:
                        text = text.split(stop)[0] if stop else text
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return results

    # ------------------------------------------------------------------------------------------ passes
    @staticmethod
    def _split(context: str, continuation: str) -> tuple[str, str]:
        """As lm-eval's own models: trailing spaces of the context belong to the continuation."""
        spaces = len(context) - len(context.rstrip())
        return (context[:-spaces], context[-spaces:] + continuation) if spaces else (context, continuation)

    def _encode(self, text: str) -> list[int]:
        return self.pair.receiver.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _prefix_token(self) -> int:
        tokenizer = self.pair.receiver.tokenizer
        return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id

    @torch.no_grad()
    def _fused_scores(self, contexts: list[str], continuations: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts prefilled in one batch (fused unless ``fuse`` is False), each continuation scored after its
        prompt as ``C2CModel.choice_scores`` scores choices."""
        batch = self.pair.prepare(contexts).to(self.pair.device)
        rows = [self._encode(text) for texts in continuations for text in texts]
        sums, _, greedy = self.pair.continuation_tokens(batch, rows, [len(t) for t in continuations], self.fuse)
        return sums, greedy

    @torch.no_grad()
    def _receiver_tokens(self, context: list[int], predicted: list[int]) -> tuple[float, bool]:
        """The receiver alone: log-likelihood of token ids ``predicted`` after ``context`` (at least one id)."""
        model = self.pair.receiver.model
        ids = torch.tensor([context], device=self.pair.device)
        mask = torch.ones_like(ids)
        sums, _, greedy = token_continuations(model, self.pair.receiver.tokenizer, ids, mask,
                                              prompt_cache(model, ids, mask), [predicted], [1])
        return float(sums[0]), bool(greedy[0])


def write_task(items: Sequence[MCItem], folder: str | Path, task: str, layout: str = "c2c",
               cache_dir: str | Path | None = None) -> Path:
    """c2c multiple-choice items as an lm-eval task in ``folder`` (``--include_path``): ``task.jsonl`` and
    ``task.yaml``, with the prompt and choices ``c2c eval --scoring cloze`` scores (lm-eval's ``arc_easy`` uses
    the same prompt). Both layouts score the same continuation, " " + choice, so give the same log-likelihoods
    and ``acc``; they differ in ``acc_norm``. ``layout="c2c"`` puts the space in the choices (target_delimiter
    ""), so lm-eval divides by the characters c2c divides by and ``acc_norm`` is ``c2c eval``'s cloze pick;
    ``"lm-eval"`` is lm-eval's usual layout (target_delimiter " "), which divides by the choice without it."""
    if layout not in ("c2c", "lm-eval"):
        raise ValueError(f"layout {layout!r} is unknown; expected c2c or lm-eval")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": item.id, "question": item.question, "prompt": mc_prompt(item, "cloze"), "answer": item.answer,
             "choices": cloze_continuations(item) if layout == "c2c" else list(item.choices)} for item in items]
    data = folder / f"{task}.jsonl"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    kwargs = {"data_files": {"test": str(data.resolve())}, **({"cache_dir": str(cache_dir)} if cache_dir else {})}
    config = {"task": task, "dataset_path": "json", "dataset_kwargs": kwargs, "test_split": "test",
              "output_type": "multiple_choice", "doc_to_text": "prompt", "doc_to_choice": "choices",
              "doc_to_target": "answer", "target_delimiter": "" if layout == "c2c" else " ",
              "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                              for m in ("acc", "acc_norm")]}
    path = folder / f"{task}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return path


if "c2c" not in MODEL_REGISTRY:  # once, also when this file runs as __main__ (python -m c2c.lm_eval_harness)
    register_model("c2c")(C2CLM)


def main() -> None:
    """lm-eval's command line, with the ``c2c`` model registered."""
    from lm_eval.__main__ import cli_evaluate
    cli_evaluate()


if __name__ == "__main__":
    sys.exit(main())
