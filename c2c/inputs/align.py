"""Token and layer alignment between a receiver and a sharer with different tokenizers and depths.

The receiver's tokenization is the master: every receiver position gets at most one sharer position whose
KV entry is fused into it. Each model renders the prompt its own way (its own chat template, or plain text
when it has none); only tokens of the message text are fused, never template tokens.

Strategies:
- ``offsets`` (default): the sharer tokenizes the text naturally; receiver token ``t`` covering characters
  ``[a, b)`` of a message reads the sharer token covering character ``b - 1`` of the same message (or, in a
  gap, the last sharer token starting before it). Exact for CJK, emoji and byte-level pieces, because it
  works on characters rather than on decoded token strings.
- ``offsets_ahead``: ``offsets``, then each fused receiver position reads the sharer position one ahead (the
  last fused position reads the sharer's last prompt token, clamped there). Not the paper's protocol: it lets
  the sharer's state at the token that predicts the answer, which the paper leaves to the receiver alone,
  reach the fused cache (the knowledge-handoff probe finds a sharer's recalled fact there and barely before).
- ``receiver_ids`` (the reference's layout for pairs that share a vocabulary, e.g. its Qwen3 <- Qwen2.5 fusers):
  the sharer reads the receiver's own token ids, chat template included, one position per receiver position,
  and every prompt position but the last is fused. Needs a sharer whose vocabulary covers the receiver's ids.
- ``reencode_first`` / ``reencode_longest``: the reference's token-level rule without its chat-level layout.
  Each receiver token of the message text is decoded alone and re-encoded with the sharer tokenizer, keeping
  the first or the longest sharer token; the sharer reads only that sequence (its BOS, then one token per
  message token), not its own template. The reference also gives the sharer its own template sections, padded
  to the receiver's length; this does not.
- ``identity``: both tokenizers are the same; the sharer reads the receiver's ids, template included.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field, replace

from transformers import PreTrainedTokenizerBase

from ..core.names import LAYER_MAPS, RENAMED_ALIGNMENTS, TOKEN_ALIGNMENTS


Message = dict[str, str]
Prompt = str | list[Message]  # a user prompt, or a conversation


def as_messages(prompt: str | list[Message]) -> list[Message]:
    """A bare string is one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return list(prompt)


def same_tokenizer(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    return a is b or (a.get_vocab() == b.get_vocab() and a.chat_template == b.chat_template)


@dataclass
class Rendered:
    """A prompt as one model sees it: text, its tokens with character offsets, and where each message is."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    spans: list[tuple[int, int] | None]  # per message: character span of its content in ``text``


def render(tokenizer: PreTrainedTokenizerBase, messages: list[Message], chat: bool,
           add_generation_prompt: bool = True) -> Rendered:
    """Render messages with the tokenizer's chat template (``chat``) or as plain text joined by blank lines."""
    if not messages or not any(m["content"].strip() for m in messages):
        raise ValueError("the prompt is empty: give at least one message with some text")
    if chat and tokenizer.chat_template:
        # enable_thinking=False: as the reference renders Qwen3's template (other templates ignore it)
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             enable_thinking=False)
        spans, cursor = [], 0
        for message in messages:
            content = message["content"]
            start = text.find(content, cursor) if content else -1
            if start < 0 and content.strip():  # some templates strip the content
                content = content.strip()
                start = text.find(content, cursor)
            spans.append((start, start + len(content)) if start >= 0 else None)
            cursor = max(cursor, start + len(content)) if start >= 0 else cursor
        add_special_tokens = False  # the template wrote them
    else:
        text, spans = "", []
        for message in messages:
            text += "\n\n" if text else ""
            spans.append((len(text), len(text) + len(message["content"])))
            text += message["content"]
        add_special_tokens = True
    encoding = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    return Rendered(text, list(encoding["input_ids"]), [tuple(o) for o in encoding["offset_mapping"]], spans)


def content_tokens(rendered: Rendered) -> list[tuple[int, int, int, int]]:
    """``(token index, message index, start, end)`` for tokens inside message text, offsets relative to it."""
    found = []
    message = 0
    for index, (start, end) in enumerate(rendered.offsets):
        if end <= start:
            continue  # special tokens have empty spans
        while message < len(rendered.spans) and (rendered.spans[message] is None or start >= rendered.spans[message][1]):
            message += 1
        if message == len(rendered.spans):
            break
        span_start, span_end = rendered.spans[message]
        a, b = max(start, span_start), min(end, span_end)
        if b > a:
            found.append((index, message, a - span_start, b - span_start))
    return found


@dataclass
class Alignment:
    """One prompt aligned for one sharer."""

    sharer_ids: list[int]
    positions: list[int]  # per receiver position: the sharer position fused into it, or -1 (not fused)
    exact: int = 0  # fused receiver tokens whose character span equals their sharer token's span
    approximate: int = 0  # fused receiver tokens that share a sharer token or cover part of one

    def ahead(self) -> "Alignment":
        """Each fused position reads the next sharer position (the last sharer position at most)."""
        last = len(self.sharer_ids) - 1
        return replace(self, positions=[min(p + 1, last) if p >= 0 else -1 for p in self.positions])


OFFSET_ALIGNMENTS = ("offsets", "offsets_ahead")  # the sharer reads the text its own way, aligned by offsets


def check_token_alignment(strategy: str, name: str = "token alignment") -> None:
    """ValueError unless ``strategy`` is a token alignment of this version (``name``: what the user called it)."""
    if strategy in RENAMED_ALIGNMENTS:
        raise ValueError(f"{name} {strategy!r} is unknown; it is now called {RENAMED_ALIGNMENTS[strategy]!r} (the same "
                         "rule): use that name (in a checkpoint: edit c2c_config.json)")
    if strategy not in TOKEN_ALIGNMENTS:
        raise ValueError(f"{name} {strategy!r} is unknown; expected one of {TOKEN_ALIGNMENTS}")


def check_layer_map(strategy: str | list[int], name: str = "layer map") -> None:
    """ValueError unless ``strategy`` is a list (checked against the models by ``layer_map``) or a named map."""
    if not isinstance(strategy, (list, tuple)) and strategy not in LAYER_MAPS:
        raise ValueError(f"{name} {strategy!r} is unknown; expected one of {LAYER_MAPS} or a list of sharer layers, "
                         "one per receiver layer")


@dataclass
class TokenAligner:
    receiver: PreTrainedTokenizerBase
    sharer: PreTrainedTokenizerBase
    strategy: str = "offsets"
    sharer_vocab_size: int | None = None  # the sharer's embedding rows (default: its tokenizer's length)
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        check_token_alignment(self.strategy)
        if self.strategy == "identity" and not same_tokenizer(self.receiver, self.sharer):
            raise ValueError("token alignment 'identity' needs the same tokenizer on both models; "
                             "use 'offsets' for different tokenizers")
        self.sharer_vocab_size = self.sharer_vocab_size or len(self.sharer)
        if self.strategy == "receiver_ids" and len(self.receiver) > self.sharer_vocab_size:
            raise ValueError(f"token alignment 'receiver_ids' feeds the sharer the receiver's token ids, but the "
                             f"receiver has {len(self.receiver)} ids and the sharer's vocabulary only "
                             f"{self.sharer_vocab_size}; it needs a sharer with the receiver's vocabulary (e.g. the "
                             "same model family). Use 'offsets' for different vocabularies")

    def align(self, messages: list[Message], receiver_view: Rendered, chat: bool,
              sharer_messages: list[Message] | None = None, shifted: dict[int, tuple[int, int]] | None = None
              ) -> Alignment:
        """Map the receiver's rendering of ``messages`` to sharer positions.

        The last receiver position is never fused: it produces the first answer token from the fused cache.
        ``sharer_messages`` makes the sharer read other message texts (a context ahead of the question) with
        ``shifted[m] = (r, s)``: in message ``m`` the receiver's characters from ``r`` on are the sharer's from
        ``s`` on, and the receiver's characters before ``r`` are not fused (always by offsets).
        """
        alignment = self._align(messages, receiver_view, chat, sharer_messages, shifted)
        return alignment.ahead() if self.strategy == "offsets_ahead" else alignment

    def _align(self, messages: list[Message], receiver_view: Rendered, chat: bool,
               sharer_messages: list[Message] | None, shifted: dict[int, tuple[int, int]] | None) -> Alignment:
        fusable = [t for t in content_tokens(receiver_view) if t[0] < len(receiver_view.ids) - 1]
        if sharer_messages is not None:
            shifted = shifted or {}
            moved = []
            for index, message, a, b in fusable:
                r, s = shifted.get(message, (0, 0))
                if a >= r:
                    moved.append((index, message, a - r + s, b - r + s))
            return self._align_offsets(sharer_messages, receiver_view, moved, chat)
        if self.strategy in ("identity", "receiver_ids"):
            positions = list(range(len(receiver_view.ids) - 1)) + [-1]
            return Alignment(list(receiver_view.ids), positions, exact=len(positions) - 1)
        if self.strategy in OFFSET_ALIGNMENTS:
            return self._align_offsets(messages, receiver_view, fusable, chat)
        return self._align_reencoded(receiver_view, fusable)

    def _align_offsets(self, messages: list[Message], receiver_view: Rendered, fusable: list, chat: bool) -> Alignment:
        sharer_view = render(self.sharer, messages, chat)
        # Per message: sorted starts of the sharer's content tokens (relative to the message) and their indices.
        starts: dict[int, list[int]] = {}
        tokens: dict[int, list[tuple[int, int, int]]] = {}
        for index, message, a, b in content_tokens(sharer_view):
            starts.setdefault(message, []).append(a)
            tokens.setdefault(message, []).append((index, a, b))
        positions = [-1] * len(receiver_view.ids)
        exact = approximate = 0
        for index, message, a, b in fusable:
            if message not in starts:
                continue  # this message was not found in the sharer's rendering
            k = max(bisect.bisect_right(starts[message], b - 1) - 1, 0)
            sharer_index, sa, sb = tokens[message][k]
            positions[index] = sharer_index
            if (sa, sb) == (a, b):
                exact += 1
            else:
                approximate += 1
        return Alignment(sharer_view.ids, positions, exact, approximate)

    def _align_reencoded(self, receiver_view: Rendered, fusable: list) -> Alignment:
        sharer_ids = [self.sharer.bos_token_id] if _adds_bos(self.sharer) else []
        positions = [-1] * len(receiver_view.ids)
        exact = approximate = 0
        for index, _, _, _ in fusable:
            token_id = receiver_view.ids[index]
            if token_id not in self._cache:
                text = self.receiver.decode([token_id])
                pieces = self.sharer.encode(text, add_special_tokens=False) or [self.sharer.unk_token_id or 0]
                if self.strategy == "reencode_first":
                    choice = pieces[0]
                else:  # longest decoded string, earliest on ties
                    choice = max(pieces, key=lambda p: (len(self.sharer.decode([p])), -pieces.index(p)))
                self._cache[token_id] = (choice, len(pieces) == 1)
            choice, single = self._cache[token_id]
            positions[index] = len(sharer_ids)
            sharer_ids.append(choice)
            exact += single
            approximate += not single
        return Alignment(sharer_ids, positions, exact, approximate)


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def layer_map(strategy: str | list[int], receiver_layers: int, sharer_layers: int) -> list[int]:
    """Sharer layer read by each receiver layer.

    ``last_aligned`` (the paper's terminal alignment): last layers meet, and a deeper receiver's first layers
    all read sharer layer 0. ``spread``: receiver layer ``t`` reads the sharer layer at the same relative depth.
    A list is an explicit map, validated.
    """
    check_layer_map(strategy)
    if isinstance(strategy, (list, tuple)):
        mapping = [int(s) for s in strategy]
        if len(mapping) != receiver_layers or not all(0 <= s < sharer_layers for s in mapping):
            raise ValueError(f"explicit layer map {mapping} must give one sharer layer in [0, {sharer_layers}) "
                             f"for each of the receiver's {receiver_layers} layers")
        return mapping
    if strategy == "last_aligned":
        offset = sharer_layers - receiver_layers
        return [min(max(t + offset, 0), sharer_layers - 1) for t in range(receiver_layers)]
    if strategy == "spread":
        if receiver_layers == 1:
            return [sharer_layers - 1]
        return [round(t * (sharer_layers - 1) / (receiver_layers - 1)) for t in range(receiver_layers)]
