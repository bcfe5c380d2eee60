"""A context read once: the sharer's K/V of it, translated into receiver K/V, kept to answer many questions.

``C2CModel.read_context(text)`` returns a ``TranslatedContext``; every entry point that takes a sharer context
(``generate``, ``prepare`` and so choice scoring, ``c2c eval``, ``c2c generate --sharer-context``, the server)
takes one in place of the text. Its keys are position-free (the receiver's rotary is applied where a prompt
places the context), so one reading serves prompts with any prefix. It keeps the text: the receiver's prompt is
laid out around the context exactly as around the text, so an answer from a saved or cached reading equals the
answer from a fresh one.

Saved as safetensors: ``keys.{layer}`` and ``values.{layer}`` (H_R, T, d_R) per receiver layer, and string
metadata (``format``, ``version``, ``text``, ``identity``: the receiver, sharer and translator it belongs to).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..core.cache import KV
from ..core.runlog import atomic_write

FORMAT = "c2c-translated-context"
VERSION = "1"
SUFFIX = ".safetensors"


class ContextMismatch(ValueError):
    """A translated context read by another pair or translator than the one given it."""


@dataclass
class TranslatedContext:
    text: str  # the context as read (stripped)
    kv: list[KV]  # per receiver layer: position-free keys and values, each (H_R, T, d_R)
    identity: dict  # who read it: receiver, sharer (specs and shapes), translator fingerprint

    @property
    def tokens(self) -> int:
        """T: one translated position per sharer token of the context."""
        return self.kv[0][0].shape[1]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for kv in self.kv for t in kv)

    def check(self, expected: dict) -> None:
        """A ContextMismatch naming what differs unless this context was read by the ``expected`` pair."""
        differ = {key: (self.identity.get(key), expected.get(key)) for key in sorted(set(expected) | set(self.identity))
                  if self.identity.get(key) != expected.get(key)}
        if differ:
            lines = "; ".join(f"{key}: read with {_short(seen)}, this pair has {_short(wanted)}"
                              for key, (seen, wanted) in differ.items())
            raise ContextMismatch(f"this translated context was read by another pair or translator ({lines}); "
                                  "read the text again with this pair (pair.read_context(text) or c2c read-context)")

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix != SUFFIX:
            raise ValueError(f"a translated context is saved as {SUFFIX}, got {str(path)!r}; name it "
                             f"{path.with_suffix(SUFFIX).name}")
        tensors = {f"{kind}.{layer}": tensor.detach().contiguous().cpu()
                   for layer, kv in enumerate(self.kv) for kind, tensor in zip(("keys", "values"), kv)}
        metadata = {"format": FORMAT, "version": VERSION, "text": self.text, "identity": json.dumps(self.identity)}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TranslatedContext":
        path = Path(path).expanduser()
        what = f"{str(path)!r}"
        todo = "write one with c2c read-context (or TranslatedContext.save)"
        if not path.is_file():
            raise ValueError(f"the translated context {what} does not exist; {todo}")
        try:
            with safe_open(str(path), "pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"{what} is not a readable translated context ({error}); {todo}") from None
        if metadata.get("format") != FORMAT:
            raise ValueError(f"{what} is a safetensors file but not a translated context (format "
                             f"{metadata.get('format')!r}, expected {FORMAT!r}); {todo}")
        if metadata.get("version") != VERSION:
            raise ValueError(f"{what} is a translated context of version {metadata.get('version')!r}; this c2c reads "
                             f"version {VERSION}: read the text again")
        layers = len(tensors) // 2
        try:
            kv = [(tensors[f"keys.{layer}"], tensors[f"values.{layer}"]) for layer in range(layers)]
            identity = json.loads(metadata["identity"])
            text = metadata["text"]
        except (KeyError, json.JSONDecodeError) as error:
            raise ValueError(f"the translated context {what} is damaged (missing {error}); {todo}") from None
        if not kv or len(tensors) != 2 * layers or len({k.shape[1] for pair in kv for k in pair}) != 1:
            raise ValueError(f"the translated context {what} is damaged (its layers disagree); {todo}")
        return cls(text, kv, identity)


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class ContextMemo:
    """Recently read contexts, by (sharer, translator state, text hash), least recently used first out; bounded by
    the bytes of their K/V. A repeated context (a server's next request, an evaluation's next question about the
    same document) is not read by the sharer again."""

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[tuple, TranslatedContext] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, key: tuple) -> TranslatedContext | None:
        found = self.entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self.entries.move_to_end(key)
        return found

    def put(self, key: tuple, context: TranslatedContext) -> None:
        if key in self.entries or context.nbytes > self.max_bytes:
            return
        self.entries[key] = context
        self.bytes += context.nbytes
        while self.bytes > self.max_bytes:
            _, dropped = self.entries.popitem(last=False)
            self.bytes -= dropped.nbytes

    def clear(self) -> None:
        """Forget every context and the counts."""
        self.entries.clear()
        self.bytes = self.hits = self.misses = 0


def _short(value) -> str:
    return json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
