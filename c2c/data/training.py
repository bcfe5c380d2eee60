"""Training data as `Conversation`s: instruction JSON, chat JSONL, or the items of a benchmark as prompts."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .benchmarks import load_benchmark
from .hub import hub_id
from .local import DATA_DIR_ENV, data_root
from .prompts import cloze_continuations, mc_prompt
from .rows import SKIP_HINT, DataError, MCItem, RowError, get, json_obj, read_jsonl, read_text

log = logging.getLogger(__name__)


@dataclass
class Conversation:
    messages: list[dict]  # [{"role": "user"|"assistant"|"system", "content": str}, ...]; last = target
    source: str  # "file:line" or "file#index", for error messages
    choices: list[str] | None = None  # multiple choice (target "choices"): the scored continuations
    answer: int | None = None  # index of the right one in ``choices``
    context: str | None = None  # a text only the sharers read (never the receiver, nor a LoRA receiver)


_ROLES = {"system", "user", "assistant"}


def _conversations(
    rows: Iterator[tuple[str, Any]], build: Callable[[Any], list[dict] | None], skip_bad: bool, path: Path
) -> list[Conversation]:
    """Shared loop of the training-data loaders: build() returns messages, None to skip, or raises."""
    out, bad, empty = [], [], 0
    for where, raw in rows:
        try:
            messages = build(raw)
        except RowError as e:
            if not skip_bad:
                raise DataError(f"{where}: {e}. {SKIP_HINT}") from None
            bad.append(f"{where}: {e}")
            continue
        if messages is None:
            empty += 1
        else:
            out.append(Conversation(messages, where))
    if empty or bad:
        log.warning("%s: skipped %d empty and %d malformed rows; kept %d", path, empty, len(bad), len(out))
        for line in bad:
            log.warning("skipped %s", line)
    return out


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"training data file {path} not found; pass an existing .json or .jsonl file")
    return path


def _instruction_messages(obj: Any) -> list[dict] | None:
    if not isinstance(obj, dict):
        raise RowError(f"a JSON {type(obj).__name__}", "an object {instruction, input, output|response}")
    target_key = "output" if "output" in obj else "response"
    values = [obj.get("instruction", ""), obj.get("input") or "", obj.get(target_key, "")]
    if not all(isinstance(v, str) for v in values):
        raise RowError(f"non-text fields in {str(obj)[:80]!r}", "text instruction, input, output/response")
    instruction, extra, target = (v.strip() for v in values)
    if not instruction or not target:
        return None
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": target}]


def load_instruction_json(path: str | Path, skip_bad: bool = False) -> list[Conversation]:
    """Alpaca {instruction, input, output} or GPTeacher {instruction, input, response} lists.

    Rows with an empty instruction or target are skipped and counted (logged).
    """
    path = _existing(path)
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); expected a list of objects") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: a JSON {type(data).__name__}; expected a list of {{instruction, input, output}}")
    rows = ((f"{path}#{i}", obj) for i, obj in enumerate(data))
    return _conversations(rows, _instruction_messages, skip_bad, path)


def _chat_messages(text: str) -> list[dict]:
    messages = get(json_obj(text), "messages")
    if not isinstance(messages, list) or not messages:
        raise RowError(f"messages {str(messages)[:80]!r}", "a non-empty list of messages")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise RowError(f"message {str(m)[:80]!r}", "{role: system|user|assistant, content: text}")
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise RowError(f"last message {str(messages[-1])[:80]!r}", "a non-empty assistant message last")
    if not any(m["role"] == "user" for m in messages):
        raise RowError("no user message", "at least one user message before the assistant's")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def load_chat_jsonl(path: str | Path, skip_bad: bool = False) -> list[Conversation]:
    """One {"messages": [...]} per line; the last message must be the assistant's target."""
    path = _existing(path)
    return _conversations(((f"{path}:{n}", t) for n, t in read_jsonl(path)), _chat_messages, skip_bad, path)


def mc_conversations(items: list[MCItem], prompt_style: str, target: str) -> list[Conversation]:
    """Training pairs from MC items; target "letter", "text", "both" (two per item), or "choices" (the answer
    text, plus every choice's cloze continuation for the choice objective of ``c2c train``). Free-text items
    (SQuAD) take target "text": their first reference answer."""
    targets = {"letter": ("letter",), "text": ("text",), "both": ("letter", "text"), "choices": ("choices",)}
    if target not in targets:
        raise ValueError(f"unknown target {target!r}; expected letter, text, both or choices")
    out = []
    for item in items:
        if not item.choices and target != "text":
            raise DataError(f"item {item.id} is free text (no choices): train on it with target: text")
        prompt = mc_prompt(item, prompt_style)
        for kind in targets[target]:
            answer = f"The correct answer is {item.letters[item.answer]}." if kind == "letter" else \
                item.gold_answers[0]
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            choices = cloze_continuations(item) if kind == "choices" else None
            out.append(Conversation(messages, f"{item.id}#{kind}", choices, item.answer if choices else None,
                                    item.context))
    return out


_MC_SPEC_KEYS = {"benchmark", "split", "prompt_style", "target", "limit", "seed"}


def resolve_data_path(
    path: str | Path, data_dir: str | Path | None = None, base_dir: str | Path | None = None
) -> Path:
    """A training data file: an absolute path as given; a relative one against the data dir (data_dir, else
    C2C_DATA_DIR; not a hub dataset), else against base_dir (a recipe's own folder), whichever holds the
    file first. Never against the current directory."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    root, origin = data_root(data_dir)
    bases = [] if root is None or hub_id(root) is not None else [(Path(root), f"the data dir, from {origin}")]
    if base_dir is not None:
        bases.append((Path(base_dir), "the recipe's folder"))
    for base, _ in bases:
        if (base / path).is_file():
            return base / path
    looked = "; ".join(f"{base / path} ({what})" for base, what in bases)
    raise DataError(
        f"training data file {path} not found: a relative path resolves against the data dir (data_dir, else "
        f"{DATA_DIR_ENV}), else the recipe's folder, never the current directory; "
        + (f"looked at {looked}" if bases else "neither was given")
        + f". Set data_dir (or {DATA_DIR_ENV}) to the folder that holds it, or give an absolute path."
    )


def load_training_data(
    spec: str | dict,
    data_dir: str | Path | None = None,
    skip_bad: bool = False,
    base_dir: str | Path | None = None,
) -> list[Conversation]:
    """Conversations from a .json (instruction) or .jsonl (chat) file, or from a benchmark.

    A benchmark is given as a dict {"benchmark", "split"="train", "prompt_style"="generate",
    "target"="letter", "limit", "seed"} or a string "benchmark:NAME[:SPLIT[:STYLE[:TARGET]]]", and loaded
    as load_benchmark does (data_dir, else C2C_DATA_DIR, else the hub). A relative file path resolves
    against the data dir, else base_dir (the recipe's folder), never the current directory
    (see resolve_data_path).
    """
    if isinstance(spec, str) and spec.startswith("benchmark:"):
        keys = ("benchmark", "split", "prompt_style", "target")
        spec = dict(zip(keys, spec.split(":")[1:]))
    if isinstance(spec, dict):
        unknown = set(spec) - _MC_SPEC_KEYS
        if unknown or "benchmark" not in spec:
            raise DataError(f"training data spec {spec}: expected keys {sorted(_MC_SPEC_KEYS)}, 'benchmark' set")
        bench = load_benchmark(
            spec["benchmark"],
            spec.get("split", "train"),
            data_dir,
            skip_bad,
            spec.get("limit"),
            spec.get("seed", 0),
        )
        source = f"{bench.name}:{bench.split}"
        style, target = spec.get("prompt_style", "generate"), spec.get("target", "letter")
        conversations = mc_conversations(bench.items, style, target)
    elif str(spec).endswith(".json"):
        path = resolve_data_path(spec, data_dir, base_dir)
        source, conversations = str(path), load_instruction_json(path, skip_bad)
    elif str(spec).endswith(".jsonl"):
        path = resolve_data_path(spec, data_dir, base_dir)
        source, conversations = str(path), load_chat_jsonl(path, skip_bad)
    else:
        raise DataError(
            f"training data {spec!r}: expected a .json (instruction) or .jsonl (chat) file, "
            "a dict with 'benchmark', or 'benchmark:NAME:SPLIT'"
        )
    if not conversations:
        raise DataError(f"no examples in {source}; check the file (or split) is not empty")
    return conversations
