"""The public model: a frozen receiver, one or more frozen sharers, and the fusers that join them.

One request (see docs/architecture.md): each sharer prefills its own rendering of the prompt; the receiver
prefills the prompt minus its last token section by section, and at the end of each run of fused tokens, per
receiver layer, the fuser turns the aligned sharer K/V and the receiver K/V into a residual added to the
receiver cache (residuals of several sharers are summed), so every later token reads the fused cache; the
receiver then runs the last prompt token and decodes from the fused cache, unfused.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache

from . import cache as kvcache
from . import fuser_hub
from .align import Message, Rendered, TokenAligner, as_messages, layer_map, render, same_tokenizer
from . import layout
from .layout import TranslatedSection, pad_rows
from .fuser import BranchStack, FuserConfig, LayerFuser, temperature_at
from .models import LoadedModel, load_model
from .rotary import Rotary
from .translator import STORAGE_DTYPES, ContextTranslator, TranslatorConfig, plain_kv
from .validate import check_types

FORMAT_VERSION = 2  # 2: optional context translators, optional fusers
CONFIG_NAME = "c2c_config.json"
WEIGHTS_NAME = "fuser.safetensors"

Prompt = str | list[Message]
CONTEXT_CHANNELS = (None, "translated", "fused")


class CheckpointError(ValueError):
    """A fuser checkpoint that cannot be used as given; the message says why and what to do."""


@dataclass
class SharerConfig:
    model: str
    shape: dict
    layer_map: list[int]
    token_alignment: str = "offsets"

    def __post_init__(self):
        check_types(self, CheckpointError, "sharer ")
        layers = self.shape.get("num_layers")
        if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < (layers or 0) for s in self.layer_map):
            raise CheckpointError(f"sharer {self.model!r}: layer_map {self.layer_map!r} must list sharer layers in "
                                  f"[0, {layers}), one per receiver layer")


@dataclass
class C2CConfig:
    """Everything needed to rebuild the fusers and to check that they fit the models they are given."""

    receiver: str
    receiver_shape: dict
    sharers: list[SharerConfig]
    fuser: FuserConfig | None = field(default_factory=FuserConfig)  # None: no fused-prompt channel
    chat_template: bool = True  # render prompts with each model's chat template where it has one
    format_version: int = FORMAT_VERSION
    translator: TranslatorConfig | None = None  # the translated-context channel, one translator per sharer

    def __post_init__(self):
        check_types(self, CheckpointError)
        receiver_layers = self.receiver_shape.get("num_layers")
        for sharer in self.sharers:
            if len(sharer.layer_map) != receiver_layers:
                raise CheckpointError(f"sharer {sharer.model!r}: layer_map has {len(sharer.layer_map)} entries, the "
                                      f"receiver {receiver_layers} layers; one sharer layer per receiver layer")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["fuser"] = self.fuser.to_dict() if self.fuser else None
        data["translator"] = self.translator.to_dict() if self.translator else None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "C2CConfig":
        if not isinstance(data, dict):
            raise CheckpointError(f"config must be a JSON object, got a {type(data).__name__}; it is not a c2c config")
        version = data.get("format_version")
        if not isinstance(version, int):
            raise CheckpointError(f"config has no integer format_version (got {version!r}); it is not a c2c config")
        if version > FORMAT_VERSION:
            raise CheckpointError(f"checkpoint format version {version} is newer than this c2c understands "
                                  f"({FORMAT_VERSION}); upgrade c2c (pip install -U c2c)")
        try:
            if not isinstance(data["sharers"], list) or not all(isinstance(x, dict) for x in data["sharers"]):
                raise ValueError(f"sharers must be a list of objects, got {data['sharers']!r}")
            sharers = [SharerConfig(**s) for s in data["sharers"]]
            fuser = FuserConfig.from_dict(data["fuser"]) if data["fuser"] is not None else None
            translator = data.get("translator")
            translator = TranslatorConfig.from_dict(translator) if translator is not None else None
            if fuser is None and translator is None:
                raise ValueError("it has neither a fuser nor a translator")
            rest = {k: v for k, v in data.items() if k not in ("sharers", "fuser", "translator")}
            return cls(sharers=sharers, fuser=fuser, translator=translator, **rest)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise CheckpointError(f"config is malformed: {error}") from error


@dataclass
class Batch:
    """Left-padded prompts (plus right-padded responses when training or scoring) and their sharer inputs."""

    input_ids: torch.Tensor  # (B, P + R) receiver ids
    attention_mask: torch.Tensor  # (B, P + R)
    prompt_length: int  # P: prompts are left-padded to this width
    sharer_ids: list[torch.Tensor]  # per sharer (B, S_j)
    sharer_mask: list[torch.Tensor]  # per sharer (B, S_j)
    positions: list[torch.Tensor]  # per sharer (B, P): sharer position fused into each receiver position, -1 = none
    labels: torch.Tensor | None = None  # (B, P + R): response ids, -100 elsewhere
    sharer_kv: list[list[kvcache.KV]] | None = None  # precomputed sharer caches (training reuse)
    sections: list["TranslatedSection | None"] = field(default_factory=list)  # per sharer: its translated context
    fuse_prompt: bool = True  # False: only the translated channel (the fusers leave the prompt alone)

    def prompt_tokens(self) -> list[int]:
        """Per row, the receiver tokens of its prompt: its real columns less those of translated contexts."""
        counts = self.attention_mask[:, :self.prompt_length].sum(1)
        for section in self.sections:
            if section is not None:
                counts = counts - (section.positions >= 0).sum(1)
        return counts.tolist()

    def to(self, device: torch.device) -> "Batch":
        move = lambda t: t.to(device) if t is not None else None  # noqa: E731
        return Batch(move(self.input_ids), move(self.attention_mask), self.prompt_length,
                     [move(t) for t in self.sharer_ids], [move(t) for t in self.sharer_mask],
                     [move(t) for t in self.positions], move(self.labels),
                     [[(move(k), move(v)) for k, v in kv] for kv in self.sharer_kv] if self.sharer_kv else None,
                     [s.to(device) if s else None for s in self.sections], self.fuse_prompt)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip padding, as ``generate`` computes them: (B, N) -> (B, N)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def continuation_logprobs(model: nn.Module, tokenizer, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                          cache: DynamicCache, continuations: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-likelihood of each prompt's continuations, all in one batch: (sum of log-probabilities, token count),
    each (R,) over the R continuations in order. Differentiable when grad is enabled (the choice objective).

    ``prompt_ids``/``prompt_mask`` (B, P) are the left-padded prompts and ``cache`` holds their first P - 1
    positions (as ``C2CModel.prefill`` leaves them); each continuation runs after its prompt's last token.
    """
    rows = [tokenizer(text, add_special_tokens=False)["input_ids"] for texts in continuations for text in texts]
    if any(not row for row in rows):
        raise ValueError("a continuation is empty; every choice needs text to score")
    counts = torch.tensor([len(texts) for texts in continuations], device=prompt_ids.device)
    last = prompt_ids[:, -1].repeat_interleave(counts)  # (R,)
    pad = tokenizer.pad_token_id or 0
    tail = torch.cat([last[:, None], pad_rows(rows, pad, left=False).to(last.device)], dim=1)  # (R, 1 + W)
    tail_mask = pad_rows([[1] * (1 + len(r)) for r in rows], 0, left=False).to(tail.device)
    mask = torch.cat([prompt_mask[:, :-1].repeat_interleave(counts, dim=0), tail_mask], dim=1)
    prefix = prompt_ids.shape[1] - 1
    logits = model(input_ids=tail, attention_mask=mask, position_ids=position_ids(mask)[:, prefix:],
                   cache=kvcache.repeat_rows(cache, counts), use_cache=True).logits.float()  # (R, 1 + W, V)
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, tail[:, 1:, None]).squeeze(-1)  # (R, W)
    valid = tail_mask[:, 1:].to(logprobs.dtype)
    return (logprobs * valid).sum(-1), valid.sum(-1)


def _per_character(sums: torch.Tensor, choices: Sequence[Sequence[str]]) -> list[torch.Tensor]:
    """(R,) log-likelihood sums over all prompts' choices -> per prompt, log-likelihood per character (k_i,)."""
    characters = torch.tensor([len(text) for texts in choices for text in texts], device=sums.device)
    return list((sums / characters).split([len(texts) for texts in choices]))


def _shape_dict(model: LoadedModel) -> dict:
    return asdict(model.shape)


def _max_positions(model: LoadedModel) -> int:
    return getattr(model.model.config.get_text_config(decoder=True), "max_position_embeddings", None) or 1 << 30


class C2CModel(nn.Module):
    """Receiver + sharers + fusers. Only the fusers are parameters of this module; the LLMs are the caller's."""

    def __init__(self, receiver: LoadedModel, sharers: Sequence[LoadedModel], config: C2CConfig):
        super().__init__()
        if len(sharers) != len(config.sharers) or not sharers:
            raise CheckpointError(f"config describes {len(config.sharers)} sharer(s) but {len(sharers)} were given")
        self.config = config
        self.receiver = receiver  # a LoadedModel, not an nn.Module: never trained, never saved here
        self.sharers = list(sharers)
        _check_shape("receiver", receiver, config.receiver_shape)
        for index, (sharer, sharer_config) in enumerate(zip(sharers, config.sharers)):
            _check_shape(f"sharer {index}", sharer, sharer_config.shape)
        r = receiver.shape
        self.fusers = nn.ModuleList(
            nn.ModuleList(LayerFuser(s.shape.num_kv_heads, s.shape.head_dim, r.num_kv_heads, r.head_dim, config.fuser)
                          for _ in range(r.num_layers) if config.fuser is not None)
            for s in sharers)
        self.translators = nn.ModuleList(ContextTranslator(s.shape, r, config.translator) for s in sharers) \
            if config.translator is not None else None
        position_free = config.fuser is not None and config.fuser.position_free
        self.receiver_rotary = Rotary(receiver.model) if config.translator is not None or position_free else None
        self.sharer_rotaries = [Rotary(s.model) for s in sharers] if position_free else None
        self.aligners = [TokenAligner(receiver.tokenizer, s.tokenizer, c.token_alignment,
                                      s.model.get_input_embeddings().num_embeddings)
                         for s, c in zip(sharers, config.sharers)]
        self.fusion_enabled = True
        # Inference on up to this many fused tokens runs all open branches of a sharer as one vmapped call:
        # small inputs are launch-bound (60 tiny branches); from ~512 tokens branch by branch is faster (whole
        # prefill on the default pair, 2 CPU threads, gates open: 109 fused tokens 747 ms vectorised vs 864 ms
        # looped; 609 tokens 3145 vs 2941 ms). 0 disables.
        self.vectorize_max_tokens = 512
        self.branch_stacks = [BranchStack() for _ in sharers]
        self.source: Path | None = None  # the folder it was loaded from (its recipe goes to the Hub with it)
        self.to(receiver.model.device)  # float32 master weights; they compute in the receiver's dtype (_fuse)

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def create(cls, receiver: LoadedModel | str, sharers: Sequence[LoadedModel | str],
               fuser: FuserConfig | None = None, layer_maps: str | list = "last_aligned",
               token_alignment: str = "offsets", chat_template: bool = True,
               translator: TranslatorConfig | None = None, dtype: str | torch.dtype = "float32",
               device: str | torch.device = "auto") -> "C2CModel":
        """A fresh (untrained) C2C model for any pair.

        ``layer_maps``: a strategy name or an explicit map (list of sharer layers) for every sharer, or a list
        with one of those per sharer. ``translator`` adds the translated-context channel; with a translator and
        no ``fuser`` the model has no fusers at all (otherwise ``fuser`` defaults to ``FuserConfig()``).
        ``dtype`` and ``device`` apply to the models given as specs."""
        receiver = load_model(receiver, dtype, device) if isinstance(receiver, str) else receiver
        sharers = [load_model(s, dtype, device) if isinstance(s, str) else s for s in sharers]
        per_sharer = isinstance(layer_maps, list) and bool(layer_maps) and isinstance(layer_maps[0], (list, str))
        maps = layer_maps if per_sharer else [layer_maps] * len(sharers)
        sharer_configs = []
        for sharer, strategy in zip(sharers, maps):
            alignment = "identity" if same_tokenizer(receiver.tokenizer, sharer.tokenizer) else token_alignment
            sharer_configs.append(SharerConfig(sharer.name, _shape_dict(sharer),
                                               layer_map(strategy, receiver.shape.num_layers, sharer.shape.num_layers),
                                               alignment))
        fuser = fuser if fuser is not None or translator is not None else FuserConfig()
        config = C2CConfig(receiver.name, _shape_dict(receiver), sharer_configs, fuser, chat_template,
                           translator=translator)
        return cls(receiver, sharers, config).eval()

    def save_pretrained(self, directory: str | Path, push_to_hub: bool = False, repo_id: str | None = None,
                        **hub_options) -> Path:
        """Write the config and the fuser weights (only what trains), atomically; ``push_to_hub`` also uploads
        them to ``repo_id`` (default: the folder's name) with a model card (see ``push_to_hub``)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = {name: tensor.detach().contiguous().cpu() for name, tensor in self.trained_state().items()}
        if self.translators is not None:
            storage = STORAGE_DTYPES[self.config.translator.storage_dtype]
            weights = {name: t.to(storage) if name.startswith("translators.") and ".maps." in name else t
                       for name, t in weights.items()}
        atomic_write(directory / WEIGHTS_NAME, lambda path: save_file(weights, path, metadata={"format": "c2c"}))
        atomic_write(directory / CONFIG_NAME,
                      lambda path: Path(path).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n"))
        if push_to_hub:
            self.source = directory
            self.push_to_hub(repo_id or directory.resolve().name, **hub_options)
        return directory

    def push_to_hub(self, repo_id: str, summary: str | Path | None = None, private: bool = False,
                    token: str | None = None, commit_message: str = "Upload C2C fuser",
                    revision: str | None = None) -> str:
        """Upload the fuser (config, weights, the recipe it was trained with when it was loaded from a run folder)
        with a generated model card: the pair, the alignment, the gates per layer, and the evaluation table of a
        ``c2c eval`` ``summary`` with its controls. Returns the commit URL."""
        return fuser_hub.push(self, repo_id, source=self.source, summary=summary, private=private, token=token,
                              commit_message=commit_message, revision=revision)

    @classmethod
    def from_pretrained(cls, directory: str | Path, receiver: LoadedModel | None = None,
                        sharers: Sequence[LoadedModel] | None = None, dtype: str | torch.dtype = "float32",
                        device: str | torch.device = "auto", revision: str | None = None) -> "C2CModel":
        """Load a checkpoint: a local folder, or a Hub repository ``owner/name`` (at ``revision``; fetched once,
        then from the Hub cache, offline too; a local folder of that name wins). Models not given are loaded from
        the specs stored in its config, in ``dtype`` on ``device``. The fusers keep their float32 weights and
        compute in the receiver's dtype."""
        directory = fuser_hub.resolve(directory, revision)
        config = load_config(directory)
        receiver = receiver or load_model(config.receiver, dtype, device)
        sharers = sharers or [load_model(s.model, dtype, device) for s in config.sharers]
        model = cls(receiver, sharers, config)
        model.load_fuser_weights(Path(directory) / WEIGHTS_NAME)
        model.source = Path(directory)
        return model.eval()  # as transformers' from_pretrained: hard gates, no dropout; call .train() to train

    def load_fuser_weights(self, path: Path) -> None:
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; a c2c checkpoint folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
        try:
            weights = load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise CheckpointError(f"{path} is corrupt or truncated ({error}); save or train the fuser again") from error
        expected = self.trained_state()
        missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
        wrong = [k for k in expected.keys() & weights.keys() if expected[k].shape != weights[k].shape]
        if missing or unexpected or wrong:
            raise CheckpointError(f"{path} does not fit this pair's fusers: missing {missing[:3]}, unexpected "
                                  f"{unexpected[:3]}, wrong shape {wrong[:3]}; was it saved for another pair?")
        for name, tensor in weights.items():
            if not torch.isfinite(tensor).all():
                raise CheckpointError(f"{path} holds non-finite values in {name}; the checkpoint is damaged")
        self.fusers.load_state_dict({k: v for k, v in weights.items() if not k.startswith("translators.")}, strict=True)
        if self.translators is not None:
            self.translators.load_state_dict({k[len("translators."):]: v.float() for k, v in weights.items()
                                              if k.startswith("translators.")}, strict=True)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: the fusers' weights (unprefixed, as format 1 wrote them) and the translators'."""
        state = dict(self.fusers.state_dict())
        if self.translators is not None:
            state.update({f"translators.{k}": v for k, v in self.translators.state_dict().items()})
        return state

    # ----------------------------------------------------------------------------------------- inputs
    def render_prompt(self, prompt: Prompt) -> Rendered:
        return render(self.receiver.tokenizer, as_messages(prompt), self.config.chat_template)

    def response_ids(self, prompt: Prompt, response: str, template: bool = True) -> list[int]:
        """Receiver ids of the assistant's response after ``prompt``: its turn end included when ``template``."""
        tokenizer = self.receiver.tokenizer
        messages = as_messages(prompt)
        text = response
        if template and self.config.chat_template and tokenizer.chat_template:
            prompt_text = render(tokenizer, messages, True).text
            full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                                 tokenize=False, enable_thinking=False)
            text = full[len(prompt_text):] if full.startswith(prompt_text) else response + (tokenizer.eos_token or "")
        else:
            prompt_text = render(tokenizer, messages, False).text
            if not prompt_text[-1:].isspace() and not response[:1].isspace():
                text = " " + response  # a raw completion: "Answer:" + " Paris"
            if template and tokenizer.eos_token:
                text += tokenizer.eos_token
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def prepare(self, prompts: Sequence[Prompt], responses: Sequence[str] | None = None,
                sharer_prompts: Sequence[Prompt] | None = None, max_new_tokens: int = 0,
                response_template: bool = True, sharer_contexts: Sequence | None = None,
                context_channel: str | None = None) -> Batch:
        """Tokenize and align a batch. ``sharer_prompts`` makes the sharers read other prompts (the shuffled
        control): their fused positions are spread in order over the receiver's fused positions.

        ``sharer_contexts`` gives each row a context that only the sharers read (None, one text for every
        sharer, or a list with one text or None per sharer). A sharer with a translator has it translated into
        receiver positions where the context's text would stand; a sharer with fusers reads it ahead of the
        question, whose positions are fused as usual. ``context_channel`` ("translated" or "fused") uses only
        that channel (with "translated", the prompt is not fused). Rows are laid out as regions (receiver tokens
        before the context, one translated section per translating sharer, receiver tokens after), each
        left-padded."""
        if not prompts:
            raise ValueError("no prompts given")
        if context_channel not in CONTEXT_CHANNELS:
            raise ValueError(f"context_channel {context_channel!r} is unknown; expected one of {CONTEXT_CHANNELS}")
        none = layout.row_contexts(self, None, len(prompts))
        contexts = layout.row_contexts(self, sharer_contexts, len(prompts))
        translating = none if context_channel == "fused" else contexts
        if context_channel == "translated":
            contexts = none  # no sharer reads the context ahead of the question
        rows = [layout.row_layout(self, prompt, row_contexts) for prompt, row_contexts in zip(prompts, translating)]
        widths = [max(len(row.regions[r]) for row in rows) for r in range(len(rows[0].regions))]
        starts = [sum(widths[:r]) for r in range(len(widths))]
        limit = _max_positions(self.receiver)
        window = layout.sliding_window(self.receiver)
        for row in rows:
            length = sum(len(region) for region in row.regions)
            if length + max_new_tokens > limit:
                raise ValueError(f"prompt of {length} positions + {max_new_tokens} new tokens exceeds the "
                                 f"receiver's {limit} positions; shorten the prompt (or context) or lower max_new_tokens")
            if window is not None and row.translated and length > window:
                raise ValueError(f"the translated context and prompt take {length} positions, more than the "
                                 f"receiver's sliding window of {window}: its sliding layers would not see the start "
                                 "of the context. Shorten the context")
        columns = [[starts[r] + widths[r] - len(region) + k for r, region in enumerate(row.regions)
                    for k in range(len(region))] for row in rows]  # per row: the column of each laid-out entry
        pad = self.receiver.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), sum(widths)), pad, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for index, (row, cols) in enumerate(zip(rows, columns)):
            flat = [token for region in row.regions for token in region]
            input_ids[index, cols] = torch.tensor([pad if token < 0 else token for token in flat], dtype=torch.long)
            attention_mask[index, cols] = 1
        sharer_ids, sharer_mask, positions, sections = [], [], [], []
        for j, (sharer, aligner) in enumerate(zip(self.sharers, self.aligners)):
            sharer_rows, maps = [], []
            for index, (prompt, row) in enumerate(zip(prompts, rows)):
                alignment = layout.align_row(self, j, aligner, prompt, row, contexts[index][j])
                if sharer_prompts is not None:
                    other = sharer_prompts[index]
                    other_alignment = aligner.align(as_messages(other), self.render_prompt(other),
                                                    self.config.chat_template)
                    alignment.sharer_ids = other_alignment.sharer_ids
                    alignment.positions = _spread(alignment.positions, other_alignment.positions)
                if len(alignment.sharer_ids) > _max_positions(sharer):
                    raise ValueError(f"prompt is {len(alignment.sharer_ids)} tokens for sharer {sharer.name}, over "
                                     f"its {_max_positions(sharer)} positions; shorten the prompt")
                sharer_rows.append(alignment.sharer_ids)
                column_map = [-1] * input_ids.shape[1]
                for view_index, sharer_position in enumerate(alignment.positions):
                    column = row.view_columns.get(view_index)
                    if sharer_position >= 0 and column is not None:
                        column_map[columns[index][column]] = sharer_position
                maps.append(column_map)
            width = max(len(r) for r in sharer_rows)
            # Left padding shifts each sharer row right; shift the positions that point into it.
            maps = [[p + width - len(r) if p >= 0 else -1 for p in m] for m, r in zip(maps, sharer_rows)]
            sharer_ids.append(pad_rows(sharer_rows, sharer.tokenizer.pad_token_id, left=True))
            sharer_mask.append(pad_rows([[1] * len(r) for r in sharer_rows], 0, left=True))
            positions.append(torch.tensor(maps, dtype=torch.long))
            sections.append(layout.translated_section(self, j, rows, starts, widths))
        prompt_length = input_ids.shape[1]
        labels = None
        if responses is not None:
            responses_ids = [self.response_ids(p, r, response_template) for p, r in zip(prompts, responses)]
            input_ids = torch.cat([input_ids, pad_rows(responses_ids, pad, left=False)], dim=1)
            attention_mask = torch.cat([attention_mask, pad_rows([[1] * len(r) for r in responses_ids], 0, left=False)], 1)
            labels = torch.cat([torch.full((len(prompts), prompt_length), -100),
                                pad_rows(responses_ids, -100, left=False)], dim=1)
        return Batch(input_ids, attention_mask, prompt_length, sharer_ids, sharer_mask, positions, labels,
                     sections=sections, fuse_prompt=context_channel != "translated")

    # ----------------------------------------------------------------------------------------- fusion
    @contextlib.contextmanager
    def disable_fusion(self) -> Iterator[None]:
        """Inside this context the model is exactly the receiver alone."""
        previous, self.fusion_enabled = self.fusion_enabled, False
        try:
            yield
        finally:
            self.fusion_enabled = previous

    @torch.no_grad()
    def sharer_caches(self, batch: Batch) -> list[list[kvcache.KV]]:
        """Each sharer's full-length K/V over its own input: per sharer, per layer (B, H_S, S_j, d_S)."""
        if batch.sharer_kv is not None:
            return batch.sharer_kv
        return [self.sharer_kv(index, ids, mask)
                for index, (ids, mask) in enumerate(zip(batch.sharer_ids, batch.sharer_mask))]

    @torch.no_grad()
    def sharer_kv(self, index: int, ids: torch.Tensor, mask: torch.Tensor) -> list[kvcache.KV]:
        """Sharer ``index`` prefills left-padded ``ids`` (B, S): per layer (B, H_S, S, d_S)."""
        output = self.sharers[index].model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                                           cache=kvcache.full_length_cache(), use_cache=True, logits_to_keep=1)
        return kvcache.all_kv(output.cache)

    def prefill(self, batch: Batch, fuse: bool = True) -> DynamicCache:
        """Receiver cache of the prompt minus its last token, fused with the sharers' unless ``fuse`` is False.

        As the reference runs its sections: the receiver computes each run of fused columns over the cache so
        far, the run is fused when it ends, and every later token (the chat template after a message, the next
        message) is computed over the fused cache. Rows whose runs end at different columns are fused at their
        own ends. Translated sections are written between the receiver's passes over the columns around them.
        """
        fusing = fuse and self.fusion_enabled
        sections = {s.start: (j, s) for j, s in enumerate(batch.sections) if s is not None}
        if sections and not fusing:
            raise ValueError("this batch carries translated sharer contexts; for the receiver alone prepare it "
                             "without sharer_contexts")
        end = batch.prompt_length - 1
        mask = batch.attention_mask[:, :end]
        positions = position_ids(mask)
        fuse_prompt = fusing and end > 0 and batch.fuse_prompt and self._fusion_can_change_the_cache()
        runs = self._fused_runs(batch, end) if fuse_prompt else {}
        sharer_kv = self.sharer_caches(batch) if runs else None
        stops = sorted({end, *runs, *(s.start for _, s in sections.values()), *(s.end for _, s in sections.values())})
        # A frozen receiver needs no graph for its own prompt K/V before the first fusion; a LoRA-trained one (the
        # baseline) does, and so does every pass after a fusion (it reads, and concatenates onto, fused K/V).
        needs_graph = torch.is_grad_enabled() and any(p.requires_grad for p in self.receiver.model.parameters())
        cache = kvcache.full_length_cache()
        cursor = 0
        for stop in stops:
            if stop > cursor and cursor in sections:
                j, section = sections[cursor]
                kvcache.append_kv(cache, self.translated_kv(j, section, positions[:, section.start:section.end]))
            elif stop > cursor:
                with torch.set_grad_enabled(needs_graph):
                    self.receiver.model(input_ids=batch.input_ids[:, cursor:stop], attention_mask=mask[:, :stop],
                                        position_ids=positions[:, cursor:stop], cache=cache, use_cache=True,
                                        logits_to_keep=1)
            cursor = max(cursor, stop)
            if cursor in runs:
                self._fuse(cache, batch, sharer_kv, runs[cursor])
                needs_graph = torch.is_grad_enabled()
        return cache

    def _fusion_can_change_the_cache(self) -> bool:
        """False when no fuser could add anything (none, or every gate shut at inference): the prefill then runs
        in one pass and stays bit-identical to the receiver alone."""
        if not any(len(fusers) for fusers in self.fusers):
            return False
        return self.fusers.training or bool((self.gate_logits() > 0).any())

    @staticmethod
    def _fused_runs(batch: Batch, end: int) -> dict[int, torch.Tensor]:
        """Where each row's runs of fused columns (fused by any sharer) end, among the first ``end`` columns:
        {column after a run: (B, end) bool, the columns of the runs that end there}."""
        fused = torch.stack([p[:, :end] >= 0 for p in batch.positions]).any(0)  # (B, end)
        if not fused.any():
            return {}
        starts = fused & ~F.pad(fused, (1, 0))[:, :-1]  # first column of each run
        run_id = starts.long().cumsum(1) * fused  # (B, end): 1, 2, ... per run, 0 outside
        last = fused & ~F.pad(fused, (0, 1))[:, 1:]  # last column of each run
        runs = {}
        for column in sorted(set(last.nonzero()[:, 1].tolist())):
            rows = last[:, column]
            runs[column + 1] = (run_id == run_id[:, column:column + 1]) & fused & rows[:, None]
        return runs

    def translated_kv(self, index: int, section: TranslatedSection, positions: torch.Tensor) -> list[kvcache.KV]:
        """Sharer ``index``'s context translated into receiver K/V per layer (B, H_R, W, d_R), keys rotated to
        the receiver ``positions`` (B, W) of the section's columns, zeros in padding columns."""
        with torch.no_grad():
            sharer_kv = plain_kv(self.sharers[index], section.sharer_ids, section.sharer_mask)
        present = section.positions >= 0  # (B, W)
        gather = section.positions.clamp(min=0)[:, None, :, None]  # (B, 1, W, 1)
        picked = [tuple(t.gather(2, gather.expand(-1, t.shape[1], -1, t.shape[3])) for t in kv) for kv in sharer_kv]
        out = []
        keep = present[:, None, :, None]
        for layer, (keys, values) in enumerate(self.translators[index](picked)):
            keys = self.receiver_rotary.apply(keys, layer, positions)
            dtype = self.receiver.model.dtype
            out.append((torch.where(keep, keys, 0).to(dtype), torch.where(keep, values, 0).to(dtype)))
        return out

    def _fuse(self, cache: DynamicCache, batch: Batch, sharer_kv: list[list[kvcache.KV]], select: torch.Tensor
              ) -> None:
        """Add every sharer's residual to the receiver cache, in place, at the fused columns in ``select``
        (B, length): one run of fused columns per row that has one, already in the cache."""
        length = kvcache.seq_length(cache)
        like = kvcache.layer_kv(cache, 0)[0]
        # The fusers keep float32 weights (the master weights in training) and compute in the cache's dtype.
        with torch.autocast(like.device.type, dtype=like.dtype, enabled=like.dtype != torch.float32):
            residuals = self._residuals(cache, batch, sharer_kv, select, length)
        for layer, (key, value) in enumerate(residuals):
            if key is None and value is None:
                continue  # every gate shut: this layer stays bit-identical to the receiver's
            receiver_key, receiver_value = kvcache.layer_kv(cache, layer)
            kvcache.set_layer_kv(cache, layer, receiver_key if key is None else receiver_key + key,
                                 receiver_value if value is None else receiver_value + value)

    def _residuals(self, cache: DynamicCache, batch: Batch, sharer_kv: list[list[kvcache.KV]], select: torch.Tensor,
                   length: int) -> list[list[torch.Tensor | None]]:
        """Per receiver layer, the (K, V) residuals summed over the sharers, (B, H_R, length, d_R); None where
        no gate is open."""
        residuals: list[list[torch.Tensor | None]] = [[None, None] for _ in range(len(cache.layers))]
        for index, (fusers, sharer_config, kv, positions) in enumerate(
                zip(self.fusers, self.config.sharers, sharer_kv, batch.positions)):
            if len(fusers) == 0:
                continue
            # The fuser runs on the T fused tokens only (not on padding or template tokens), as one sequence.
            rows, columns = ((positions[:, :length] >= 0) & select[:, :length]).nonzero(as_tuple=True)  # (T,) each
            if rows.numel() == 0:
                continue
            sources = positions[rows, columns]  # (T,) the sharer position of each fused token
            gathered: dict[tuple[int, int], torch.Tensor] = {}
            # Position-free keys: each model's rotary removed at its own positions (1, T); the key residual then
            # gets the receiver's rotary at the receiver's positions.
            free = self.config.fuser.position_free
            if free:
                sharer_at = position_ids(batch.sharer_mask[index])[rows, sources][None]
                receiver_at = position_ids(batch.attention_mask)[rows, columns][None]

            def sharer_input(layer: int, slot: int) -> torch.Tensor:  # (1, H_S, T, d_S), gathered once per layer
                source = (sharer_config.layer_map[layer], slot)
                if source not in gathered:
                    tokens = kvcache.select_tokens(kv[source[0]][slot], rows, sources)
                    if free and slot == 0:
                        tokens = self.sharer_rotaries[index].remove(tokens, source[0], sharer_at)
                    gathered[source] = tokens
                return gathered[source]

            def receiver_input(layer: int, slot: int) -> torch.Tensor:  # (1, H_R, T, d_R)
                tokens = kvcache.select_tokens(kvcache.layer_kv(cache, layer)[slot], rows, columns)
                return self.receiver_rotary.remove(tokens, layer, receiver_at) if free and slot == 0 else tokens

            if fusers.training or rows.numel() > self.vectorize_max_tokens:
                outputs = []
                for layer, fuser in enumerate(fusers):
                    key, value = fuser(sharer_input(layer, 0), sharer_input(layer, 1), receiver_input(layer, 0),
                                       receiver_input(layer, 1))
                    outputs += [((layer, 0), key), ((layer, 1), value)]
            else:  # inference: every open branch of this sharer in one vectorised call; shut gates cost nothing
                jobs = [(layer, slot) for layer, fuser in enumerate(fusers) for slot in (0, 1)
                        if fuser.gate_logits[slot] > 0]
                if not jobs:
                    continue
                receiver_inputs = torch.stack([receiver_input(layer, slot) for layer, slot in jobs])
                sharer_inputs = torch.stack([sharer_input(layer, slot) for layer, slot in jobs])
                branches = [(fusers[layer].key, fusers[layer].value)[slot] for layer, slot in jobs]
                outputs = zip(jobs, self.branch_stacks[index](branches, sharer_inputs.to(receiver_inputs.dtype),
                                                              receiver_inputs))
            for (layer, slot), residual in outputs:
                if residual is not None:
                    if free and slot == 0:
                        residual = self.receiver_rotary.apply(residual, layer, receiver_at)
                    like = kvcache.layer_kv(cache, layer)[slot]
                    residual = kvcache.scatter_tokens(residual.to(like.dtype), rows, columns, like)
                    total = residuals[layer][slot]
                    residuals[layer][slot] = residual if total is None else total + residual
        return residuals

    def set_gate_temperature(self, step: int, total_steps: int) -> float | None:
        if self.config.fuser is None:
            return None
        value = temperature_at(step, total_steps, self.config.fuser)
        for fuser in self.layer_fusers():
            fuser.temperature.fill_(value)
        return value

    def layer_fusers(self) -> Iterator[LayerFuser]:
        for fusers in self.fusers:
            yield from fusers

    def gate_logits(self) -> torch.Tensor:
        """(sharers, receiver layers, 2): the K and V gate logits; (sharers, 0, 2) without fusers."""
        if self.config.fuser is None:
            return torch.zeros(len(self.sharers), 0, 2)
        return torch.stack([torch.stack([f.gate_logits.detach() for f in fusers]) for fusers in self.fusers])

    # ----------------------------------------------------------------------------------------- running
    def forward(self, batch: Batch, fuse: bool = True, reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        """Logits over the response section and the cross-entropy on its labelled tokens (mean, or sum).

        The prompt prefix is fused (gradients reach the fusers through the receiver's attention of every later
        token); the last prompt token and the response run on the receiver, unfused, over the fused cache.
        """
        if batch.labels is None:
            raise ValueError("forward needs a batch prepared with responses")
        cache = self.prefill(batch, fuse=fuse)
        tail = slice(batch.prompt_length - 1, None)
        output = self.receiver.model(input_ids=batch.input_ids[:, tail], attention_mask=batch.attention_mask,
                                     position_ids=position_ids(batch.attention_mask)[:, tail], cache=cache,
                                     use_cache=True)
        logits = output.logits[:, :-1].float()  # position t predicts token t + 1
        labels = batch.labels[:, batch.prompt_length:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                               reduction=reduction)
        return logits, loss

    def choice_scores(self, batch: Batch, choices: Sequence[Sequence[str]], fuse: bool = True) -> list[torch.Tensor]:
        """Per prompt, the log-likelihood per character of each of its choice continuations (the cloze score
        ``c2c eval`` ranks by): one (k_i,) tensor per prompt, differentiable when grad is enabled."""
        cache = self.prefill(batch, fuse=fuse)
        prompt = slice(0, batch.prompt_length)
        sums, _ = continuation_logprobs(self.receiver.model, self.receiver.tokenizer, batch.input_ids[:, prompt],
                                        batch.attention_mask[:, prompt], cache, choices)
        return _per_character(sums, choices)

    @torch.no_grad()
    def sharer_choice_scores(self, batch: Batch, choices: Sequence[Sequence[str]], index: int = 0
                             ) -> list[torch.Tensor]:
        """Sharer ``index`` alone ranking each prompt's choices from the prompt it read in ``batch``: the same
        cloze score as ``choice_scores`` (and as ``c2c eval``'s ``sharer`` method), one (k_i,) tensor per prompt.

        Reads the sharer K/V that fusion reads (computing ``batch.sharer_kv`` if absent and keeping it), so a
        training step runs each sharer over its prompt once."""
        if batch.sharer_kv is None:
            batch.sharer_kv = self.sharer_caches(batch)
        sharer = self.sharers[index]
        prefix = kvcache.cache_from_kv([(k[:, :, :-1], v[:, :, :-1]) for k, v in batch.sharer_kv[index]])  # S - 1
        sums, _ = continuation_logprobs(sharer.model, sharer.tokenizer, batch.sharer_ids[index],
                                        batch.sharer_mask[index], prefix, choices)
        return _per_character(sums, choices)

    @torch.no_grad()
    def generate(self, prompts: Prompt | Sequence[Prompt], max_new_tokens: int = 128, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int | None = None,
                 stop: Sequence[str] | None = None, streamer=None, fuse: bool = True,
                 sharer_prompts: Sequence[Prompt] | None = None, sharer_contexts: Sequence | str | None = None,
                 prepared: Batch | None = None, **generate_kwargs) -> list[str]:
        """Fused prefill, then the receiver's stock ``generate`` decodes from the fused cache.

        ``sharer_contexts``: a context only the sharers read, per prompt (see ``prepare``); with fusion off the
        receiver answers without it, exactly as alone. ``generate_kwargs`` go to ``transformers`` ``generate``
        (e.g. ``stopping_criteria``). ``prepared``: the batch ``prepare`` made of these prompts (and contexts), so
        that they are not tokenized again (the server prepares each batch once, on its model thread)."""
        single = isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], dict))
        prompts = [prompts] if single else list(prompts)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if isinstance(sharer_contexts, str):
            sharer_contexts = [sharer_contexts] * len(prompts)
        contexts = sharer_contexts if fuse and self.fusion_enabled else None
        batch = prepared if prepared is not None else self.prepare(
            prompts, sharer_prompts=sharer_prompts, max_new_tokens=max_new_tokens, sharer_contexts=contexts)
        batch = batch.to(self.device)
        cache = self.prefill(batch, fuse=fuse)
        tokenizer = self.receiver.tokenizer
        sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k) if do_sample else {}
        output = self.receiver.model.generate(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, cache=cache,
            max_new_tokens=max_new_tokens, do_sample=do_sample, stop_strings=list(stop) if stop else None,
            tokenizer=tokenizer if stop else None, streamer=streamer, pad_token_id=tokenizer.pad_token_id,
            **sampling, **generate_kwargs)
        return tokenizer.batch_decode(output[:, batch.input_ids.shape[1]:], skip_special_tokens=True)

    @property
    def device(self) -> torch.device:
        return self.receiver.model.device


def _spread(own: list[int], other: list[int]) -> list[int]:
    """Give the fused positions of ``own`` the fused sharer positions of ``other``, spread in order."""
    targets = [i for i, p in enumerate(own) if p >= 0]
    sources = [p for p in other if p >= 0]
    spread = [-1] * len(own)
    if sources:
        for k, index in enumerate(targets):
            spread[index] = sources[k * len(sources) // len(targets)]
    return spread


def _check_shape(role: str, model: LoadedModel, expected: dict) -> None:
    actual = _shape_dict(model)
    if actual != expected:
        diff = {k: (expected.get(k), actual.get(k)) for k in set(expected) | set(actual) if expected.get(k) != actual.get(k)}
        raise CheckpointError(f"the {role} {model.name!r} does not match the checkpoint: (expected, given) = {diff}; "
                              "this fuser was trained for another pair; load the models it names in its config")


def load_config(directory: str | Path) -> C2CConfig:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a c2c checkpoint: {path} is missing (train one with `c2c train`)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); the checkpoint is damaged") from error
    return C2CConfig.from_dict(data)


def atomic_write(path: Path, write) -> None:
    """Write to a temporary file in the same folder, then rename: a crash never leaves a half-written file."""
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~umask)  # as open() would create it; mkstemp makes files private (0600)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
