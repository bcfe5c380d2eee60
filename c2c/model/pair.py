"""The public model: a frozen receiver, one or more frozen sharers, and the fusers that join them.

One request (see docs/architecture.md): each sharer prefills its own rendering of the prompt; the receiver
prefills the prompt minus its last token section by section, and at the end of each run of fused tokens, per
receiver layer, the fuser turns the aligned sharer K/V and the receiver K/V into a residual added to the
receiver cache (residuals of several sharers are summed), so every later token reads the fused cache; the
receiver then runs the last prompt token and decodes from the fused cache, unfused.

The pieces live apart: the config and the fuser's files (``model.config``, ``model.files``, ``model.hub``), batch
preparation (``inputs``), the receiver passes every method shares (``runtime.passes``), and where sharer K/V come
from (``runtime.sharers``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache

from ..core import cache as kvcache
from ..core.models import DTYPES, LoadedModel, global_attention_layers, load_model
from ..core.rotary import Rotary
from ..core.tensors import position_ids, weights_fingerprint
from ..inputs import batch as batching
from ..inputs.align import Rendered, TokenAligner, layer_map, same_tokenizer
from ..inputs.batch import Batch, Prompt
from ..inputs.context import check_context, sharer_reading
from ..inputs.sections import TranslatedSection
from ..inputs.translated_context import ContextMemo, TranslatedContext, text_key
from ..runtime import passes
from ..runtime.sharers import SharerRun
from ..translator.config import TranslatorConfig
from ..translator.model import ContextTranslator, neutral_constant_inputs, source_layers, token_kv
from . import files, hub
from .config import (CONFIG_NAME, WEIGHTS_NAME, C2CConfig, CheckpointError, FuserConfig, SharerConfig, check_shape,
                     load_config, shape_dict)
from .fuser import BranchStack, LayerFuser, temperature_at

__all__ = ["C2CModel", "C2CConfig", "SharerConfig", "CheckpointError", "Batch", "Prompt", "load_config",
           "CONFIG_NAME", "WEIGHTS_NAME"]


class C2CModel(nn.Module):
    """Receiver + sharers + fusers. Only the fusers are parameters of this module; the LLMs are the caller's."""

    def __init__(self, receiver: LoadedModel, sharers: Sequence[LoadedModel], config: C2CConfig):
        super().__init__()
        if len(sharers) != len(config.sharers) or not sharers:
            raise CheckpointError(f"config describes {len(config.sharers)} sharer(s) but {len(sharers)} were given")
        self.config = config
        self.receiver = receiver  # a LoadedModel, not an nn.Module: never trained, never saved here
        self.sharers = list(sharers)
        check_shape("receiver", receiver, config.receiver_shape)
        for index, (sharer, sharer_config) in enumerate(zip(sharers, config.sharers)):
            check_shape(f"sharer {index}", sharer, sharer_config.shape)
        r = receiver.shape
        self.fusers = nn.ModuleList(
            nn.ModuleList(LayerFuser(s.shape.num_kv_heads, s.shape.head_dim, r.num_kv_heads, r.head_dim, config.fuser)
                          for _ in range(r.num_layers) if config.fuser is not None)
            for s in sharers)
        self.translators = nn.ModuleList(ContextTranslator(s.shape, r, config.translator, c.translator_sources)
                                         for s, c in zip(sharers, config.sharers)) \
            if config.translator is not None else None
        # contexts read recently, reused by the next question about them (bounded: see read_context)
        self.context_memo = ContextMemo()
        self._identities: dict[int, tuple[tuple, dict]] = {}
        position_free = config.fuser is not None and config.fuser.position_free
        self.receiver_rotary = Rotary(receiver.model) if config.translator is not None or position_free else None
        self.sharer_rotaries = [Rotary(s.model) for s in sharers] if position_free else None
        self.aligners = [TokenAligner(receiver.tokenizer, s.tokenizer, c.token_alignment,
                                      s.model.get_input_embeddings().num_embeddings)
                         for s, c in zip(sharers, config.sharers)]
        self.sharer_cache_provider = SharerRun()  # or a kvstore.SharerKVStore (training reuses each example's)
        # Inference on up to this many fused tokens runs all open branches of a sharer as one vmapped call:
        # small inputs are launch-bound (60 tiny branches); from ~512 tokens branch by branch is faster (whole
        # prefill on the default pair, 2 CPU threads, gates open: 109 fused tokens 747 ms vectorised vs 864 ms
        # looped; 609 tokens 3145 vs 2941 ms). 0 disables.
        self.vectorize_max_tokens = 512
        self.branch_stacks = [BranchStack() for _ in sharers]
        self.source: Path | None = None  # the folder it was loaded from (its recipe goes to the Hub with it)
        super().to(receiver.model.device)  # the fusers only: float32 master weights, computing in the receiver's dtype

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def create(cls, receiver: LoadedModel | str, sharers: Sequence[LoadedModel | str],
               fuser: FuserConfig | None = None, layer_maps: str | list = "last_aligned",
               token_alignment: str = "offsets", chat_template: bool = True,
               translator: TranslatorConfig | None = None, dtype: str | torch.dtype = "float32",
               device: str | torch.device = "auto", translator_sources: list | None = None) -> "C2CModel":
        """A fresh (untrained) C2C model for any pair.

        ``layer_maps``: a strategy name or an explicit map (list of sharer layers) for every sharer, or a list
        with one of those per sharer. ``translator`` adds the translated-context channel; with a translator and
        no ``fuser`` the model has no fusers at all (otherwise ``fuser`` defaults to ``FuserConfig()``). Its maps
        read the sharer layers of ``translator.source_layers``, or per sharer the given ``translator_sources``
        (those of a translator trained further). ``dtype`` and ``device`` apply to the models given as specs."""
        receiver = load_model(receiver, dtype, device) if isinstance(receiver, str) else receiver
        sharers = [load_model(s, dtype, device) if isinstance(s, str) else s for s in sharers]
        per_sharer = isinstance(layer_maps, list) and bool(layer_maps) and isinstance(layer_maps[0], (list, str))
        maps = layer_maps if per_sharer else [layer_maps] * len(sharers)
        sharer_configs = []
        for index, (sharer, strategy) in enumerate(zip(sharers, maps)):
            alignment = "identity" if same_tokenizer(receiver.tokenizer, sharer.tokenizer) else token_alignment
            sources = None if translator is None else translator_sources[index] if translator_sources else \
                source_layers(receiver.shape.num_layers, sharer.shape.num_layers, translator.window,
                              global_attention_layers(sharer))
            sharer_configs.append(SharerConfig(sharer.name, shape_dict(sharer),
                                               layer_map(strategy, receiver.shape.num_layers, sharer.shape.num_layers),
                                               alignment, translator_sources=sources))
        fuser = fuser if fuser is not None or translator is not None else FuserConfig()
        config = C2CConfig(receiver.name, shape_dict(receiver), sharer_configs, fuser, chat_template,
                           translator=translator)
        return cls(receiver, sharers, config).eval()

    def save_pretrained(self, directory: str | Path, push_to_hub: bool = False, repo_id: str | None = None,
                        **hub_options) -> Path:
        """Write the config and the fuser weights (only what trains), atomically; ``push_to_hub`` also uploads
        them to ``repo_id`` (default: the folder's name) with a model card (see ``push_to_hub``)."""
        directory = Path(directory)
        weights = {name: tensor.detach().contiguous().cpu().to(self._storage_dtype(name, tensor))
                   for name, tensor in self.trained_state().items()}
        files.save_fuser(directory, self.config, weights)
        if push_to_hub:
            self.source = directory
            self.push_to_hub(repo_id or directory.resolve().name, **hub_options)
        return directory

    def _storage_dtype(self, name: str, tensor: torch.Tensor) -> torch.dtype:
        """How a trained tensor is saved: the fusers' in ``fuser.storage_dtype``, the translators' maps and
        residuals in ``translator.storage_dtype`` (their statistics, and anything not floating, as they are)."""
        if not tensor.is_floating_point():
            return tensor.dtype
        if name.startswith("translators."):
            maps = ".maps." in name or ".residuals." in name
            return DTYPES[self.config.translator.storage_dtype] if maps else tensor.dtype
        return DTYPES[self.config.fuser.storage_dtype]

    def push_to_hub(self, repo_id: str, summary: str | Path | None = None, private: bool = False,
                    token: str | None = None, commit_message: str = "Upload C2C fuser",
                    revision: str | None = None) -> str:
        """Upload the fuser (config, weights, the recipe it was trained with when it was loaded from a run folder)
        with a generated model card: the pair, the alignment, the gates per layer, and the evaluation table of a
        ``c2c eval`` ``summary`` with its controls. Returns the commit URL."""
        return hub.push(self, repo_id, source=self.source, summary=summary, private=private, token=token,
                              commit_message=commit_message, revision=revision)

    @classmethod
    def from_pretrained(cls, directory: str | Path, receiver: LoadedModel | None = None,
                        sharers: Sequence[LoadedModel] | None = None, dtype: str | torch.dtype = "float32",
                        device: str | torch.device = "auto", revision: str | None = None) -> "C2CModel":
        """Load a checkpoint: a local folder, or a Hub repository ``owner/name`` (at ``revision``; fetched once,
        then from the Hub cache, offline too; a local folder of that name wins). Models not given are loaded from
        the specs stored in its config, in ``dtype`` on ``device``. The fusers keep their float32 weights and
        compute in the receiver's dtype."""
        directory = hub.resolve(directory, revision)
        config = load_config(directory)
        receiver = receiver or load_model(config.receiver, dtype, device)
        sharers = sharers or [load_model(s.model, dtype, device) for s in config.sharers]
        model = cls(receiver, sharers, config)
        model.load_fuser_weights(Path(directory) / WEIGHTS_NAME)
        model.source = Path(directory)
        return model.eval()  # as transformers' from_pretrained: hard gates, no dropout; call .train() to train

    def load_fuser_weights(self, path: Path) -> None:
        self.context_memo.clear()
        weights = files.read_fuser_weights(path, self.trained_state())
        self.fusers.load_state_dict({k: v for k, v in weights.items() if not k.startswith("translators.")}, strict=True)
        if self.translators is not None:
            state = {k[len("translators."):]: v.float() for k, v in weights.items() if k.startswith("translators.")}
            for name in [k for k in state if k.endswith(".input_scale")]:  # fits before issue 32 kept constant
                state[name] = neutral_constant_inputs(state[name])  # inputs' tiny scales
            self.translators.load_state_dict(state, strict=True)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint holds: the fusers' weights (unprefixed, as format 1 wrote them) and the translators'."""
        state = dict(self.fusers.state_dict())
        if self.translators is not None:
            state.update({f"translators.{k}": v for k, v in self.translators.state_dict().items()})
        return state

    # ----------------------------------------------------------------------------------------- inputs
    def render_prompt(self, prompt: Prompt) -> Rendered:
        return batching.render_prompt(self, prompt)

    def response_ids(self, prompt: Prompt, response: str, template: bool = True) -> list[int]:
        return batching.response_ids(self, prompt, response, template)

    def prepare(self, prompts: Sequence[Prompt], responses: Sequence[str] | None = None,
                sharer_prompts: Sequence[Prompt] | None = None, max_new_tokens: int = 0,
                response_template: bool = True, sharer_contexts: Sequence | None = None,
                context_channel: str | None = None) -> Batch:
        """A tokenized, aligned batch (see ``batch.prepare``)."""
        return batching.prepare(self, prompts, responses, sharer_prompts, max_new_tokens, response_template,
                                sharer_contexts, context_channel)

    # ----------------------------------------------------------------------------------------- fusion
    @torch.no_grad()
    def sharer_caches(self, batch: Batch, chunks: passes.Chunks | None = None) -> list[list[kvcache.KV]]:
        """Each sharer's full-length K/V over its own input, from ``sharer_cache_provider``: per sharer, per layer
        (B, H_S, S_j, d_S)."""
        return self.sharer_cache_provider(self, batch, chunks)

    @torch.no_grad()
    def sharer_kv(self, index: int, ids: torch.Tensor, mask: torch.Tensor, chunks: passes.Chunks | None = None
                  ) -> list[kvcache.KV]:
        """Sharer ``index`` prefills left-padded ``ids`` (B, S): per layer (B, H_S, S, d_S)."""
        return passes.model_kv(self.sharers[index].model, ids, mask, chunks)

    def prefill(self, batch: Batch, fuse: bool = True, chunks: passes.Chunks | None = None,
                end: int | None = None) -> DynamicCache:
        """Receiver cache of the prompt minus its last token (or of its first ``end`` columns), fused with the
        sharers' unless ``fuse`` is False.

        As the reference runs its sections: the receiver computes each run of fused columns over the cache so
        far, the run is fused when it ends, and every later token (the chat template after a message, the next
        message) is computed over the fused cache. Rows whose runs end at different columns are fused at their
        own ends. Translated sections are written between the receiver's passes over the columns around them.
        ``chunks``: run the receiver's and sharers' passes in pieces (the server's scheduler; the same cache up to
        float rounding).
        """
        sections = {s.start: (j, s) for j, s in enumerate(batch.sections) if s is not None}
        if sections and not fuse:  # fusion off is the receiver alone, and these columns are no prompt of its own
            raise ValueError("this batch carries translated sharer contexts; with fuse=False no sharer context is "
                             "read (the receiver answers as alone): prepare the batch without sharer_contexts, as "
                             "generate does")
        end = batch.prompt_length - 1 if end is None else end
        if any(s.start < end < s.end for _, s in sections.values()):
            raise ValueError(f"a prefill cannot end at column {end}, inside a translated section")
        mask = batch.attention_mask[:, :end]
        positions = position_ids(mask)
        fuse_prompt = fuse and end > 0 and batch.fuse_prompt and self._fusion_can_change_the_cache()
        runs = self._fused_runs(batch, end) if fuse_prompt else {}
        sharer_kv = self.sharer_caches(batch, chunks) if runs else None
        stops = sorted({end, *runs, *(s.start for _, s in sections.values()), *(s.end for _, s in sections.values())})
        # A frozen receiver needs no graph for its own prompt K/V before the first fusion or translated section; a
        # LoRA-trained one (the baseline) does, and so does every pass after either: it reads, and its cache update
        # concatenates onto, the fused or translated K/V (a concatenation without a graph would detach them).
        needs_graph = torch.is_grad_enabled() and any(p.requires_grad for p in self.receiver.model.parameters())
        cache = kvcache.full_length_cache()
        cursor = 0
        for stop in stops:
            if stop > cursor and cursor in sections:
                j, section = sections[cursor]
                kvcache.append_kv(cache, self.translated_kv(j, section, positions[:, section.start:section.end]))
                needs_graph = torch.is_grad_enabled()  # later passes read the translated K/V: keep their graph
            elif stop > cursor:
                with torch.set_grad_enabled(needs_graph):
                    passes.extend_cache(self.receiver.model, cache, batch.input_ids[:, cursor:stop], mask[:, :stop],
                                         positions[:, cursor:stop], chunks)
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
        return self.fusers.training or bool(self.open_gates().any())

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

    # ----------------------------------------------------------------------------------------- contexts
    @torch.no_grad()
    def read_context(self, text: str, sharer: int = 0) -> TranslatedContext:
        """Sharer ``sharer`` reads ``text`` once, translated into receiver K/V: pass the result as a sharer context
        (to ``generate``, ``prepare``...) for every question about it, or ``save`` it. Recent readings are kept in
        ``context_memo`` (bounded by bytes), so reading the same text again costs nothing."""
        if self.translators is None:
            raise ValueError("this pair has no context translator to read a context with; load a translator "
                             "checkpoint (c2c train with method: translator)")
        if not 0 <= sharer < len(self.sharers):
            raise ValueError(f"sharer {sharer} is out of range for a pair with {len(self.sharers)} sharer(s)")
        return self.read_contexts(sharer, [check_context(text)])[0]

    def read_contexts(self, index: int, texts: Sequence[str]) -> list[TranslatedContext]:
        """Sharer ``index``'s translated readings of ``texts``, in the receiver's dtype on its device; texts read
        recently come from ``context_memo``, the others are read in one batch. While the translator trains (grad
        enabled) every text is read afresh in float32, with its graph, and nothing is kept."""
        translator = self.translators[index]
        if torch.is_grad_enabled() and any(p.requires_grad for p in translator.parameters()):
            return [TranslatedContext(text, kv, {}) for text, kv in zip(texts, self._translate(index, texts))]
        state = self.translators[index].weights_state()
        keys = [(index, state, text_key(text)) for text in texts]
        found = {key: self.context_memo.get(key) for key in dict.fromkeys(keys)}
        missing = [text for key, text in dict(zip(keys, texts)).items() if found[key] is None]
        if missing:
            identity = self.context_identity(index)
            dtype = self.receiver.model.dtype
            for key, text, kv in zip([k for k in found if found[k] is None], missing, self._translate(index, missing)):
                found[key] = TranslatedContext(text, [(k.to(dtype), v.to(dtype)) for k, v in kv], identity)
                self.context_memo.put(key, found[key])
        return [found[key] for key in keys]

    def _translate(self, index: int, texts: Sequence[str]) -> list[list[kvcache.KV]]:
        """Per text, per receiver layer, position-free (H_R, T, d_R) K and V: the sharer's reading of each text (in
        one left-padded batch, read in chunks) translated at the T tokens of the context itself."""
        sharer = self.sharers[index]
        reads = [sharer_reading(sharer.tokenizer, text) for text in texts]
        with torch.no_grad():  # per sharer layer (1, H_S, ΣT, d_S)
            picked = token_kv(sharer, [view.ids for view, _ in reads], [tokens for _, tokens in reads])
        counts = [len(tokens) for _, tokens in reads]
        per_layer = [(k[0].split(counts, dim=1), v[0].split(counts, dim=1)) for k, v in self.translators[index](picked)]
        return [[(keys[b], values[b]) for keys, values in per_layer] for b in range(len(texts))]

    def context_identity(self, index: int = 0) -> dict:
        """What a reading by sharer ``index`` belongs to: the receiver, the sharer and the translator's weights
        (a fingerprint, recomputed only when they change)."""
        state = self.translators[index].weights_state()
        cached = self._identities.get(index)
        if cached is None or cached[0] != state:
            sharer = self.config.sharers[index]
            identity = {"receiver": self.config.receiver, "receiver_shape": self.config.receiver_shape,
                        "sharer": sharer.model, "sharer_shape": sharer.shape,
                        "translator": weights_fingerprint(self.translators[index])}
            cached = self._identities[index] = (state, identity)
        return cached[1]

    def translated_kv(self, index: int, section: TranslatedSection, positions: torch.Tensor) -> list[kvcache.KV]:
        """Sharer ``index``'s contexts in a section, as receiver K/V per layer (B, H_R, W, d_R): keys rotated to
        the receiver ``positions`` (B, W) of the section's columns, zeros in padding columns. Texts are read (or
        taken from ``context_memo``) in one batch; contexts read before are placed as they are."""
        texts = [c for c in section.contexts if isinstance(c, str)]
        fresh = iter(self.read_contexts(index, texts) if texts else [])
        readings = [None if c is None else c if isinstance(c, TranslatedContext) else next(fresh)
                    for c in section.contexts]
        width = section.end - section.start
        dtype = self.receiver.model.dtype
        out = []
        for layer in range(self.receiver.shape.num_layers):
            placed = []
            for slot in range(2):
                rows = [F.pad(r.kv[layer][slot].to(positions.device), (0, 0, width - r.tokens, 0)) if r is not None
                        else None for r in readings]
                like = next(row for row in rows if row is not None)
                placed.append(torch.stack([row if row is not None else torch.zeros_like(like) for row in rows]))
            keys = self.receiver_rotary.apply(placed[0], layer, positions)  # padding stays zero: rotating 0 is 0
            out.append((keys.to(dtype), placed[1].to(dtype)))
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
                        if fuser.open_gates()[slot]]
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

    def open_gates(self) -> torch.Tensor:
        """(sharers, receiver layers, 2) bool: which K and V gates are open at inference."""
        if self.config.fuser is None:
            return torch.zeros(len(self.sharers), 0, 2, dtype=torch.bool)
        return torch.stack([torch.stack([f.open_gates() for f in fusers]) for fusers in self.fusers])

    # ----------------------------------------------------------------------------------------- running
    def forward(self, batch: Batch, fuse: bool = True, reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
        """Logits over the response section and the cross-entropy on its labelled tokens (mean, or sum).

        The prompt prefix is fused (gradients reach the fusers through the receiver's attention of every later
        token); the last prompt token and the response run on the receiver, unfused, over the fused cache.
        """
        if batch.labels is None:
            raise ValueError("forward needs a batch prepared with responses")
        logits = self.logits_from(batch, batch.prompt_length - 1, fuse)
        labels = batch.labels[:, batch.prompt_length:]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100,
                               reduction=reduction)
        return logits, loss

    def logits_from(self, batch: Batch, start: int, fuse: bool = True) -> torch.Tensor:
        """The receiver's float32 logits at columns ``start`` to the second last, (B, N - start - 1, V): column t
        predicts token t + 1. The first ``start`` columns are prefilled (and fused, translated) first; ``start``
        may not fall inside a translated section, whose columns have no receiver state to predict from."""
        cache = self.prefill(batch, fuse=fuse, end=start)
        output = self.receiver.model(input_ids=batch.input_ids[:, start:], attention_mask=batch.attention_mask,
                                     position_ids=position_ids(batch.attention_mask)[:, start:], cache=cache,
                                     use_cache=True)
        return output.logits[:, :-1].float()

    def choice_scores(self, batch: Batch, choices: Sequence[Sequence[str]], fuse: bool = True) -> list[torch.Tensor]:
        """Per prompt, the log-likelihood per character of each of its choice continuations (the cloze score
        ``c2c eval`` ranks by): one (k_i,) tensor per prompt, differentiable when grad is enabled."""
        rows = passes.continuation_rows(self.receiver.tokenizer, choices)
        sums, _, _ = self.continuation_tokens(batch, rows, [len(texts) for texts in choices], fuse)
        return passes.per_character(sums, choices)

    def continuation_tokens(self, batch: Batch, rows: Sequence[Sequence[int]], per_prompt: Sequence[int],
                            fuse: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The prompts prefilled (fused unless ``fuse`` is False), then ``per_prompt[i]`` of the token ``rows``
        scored after prompt i: (sum of log-probabilities, token count, greedy), each (R,), as
        ``passes.token_continuations``; what ``choice_scores`` and lm-eval's ``loglikelihood`` read."""
        cache = self.prefill(batch, fuse=fuse)
        prompt = slice(0, batch.prompt_length)
        return passes.token_continuations(self.receiver.model, self.receiver.tokenizer, batch.input_ids[:, prompt],
                                          batch.attention_mask[:, prompt], cache, rows, per_prompt)

    @torch.no_grad()
    def sharer_choice_scores(self, batch: Batch, choices: Sequence[Sequence[str]], index: int = 0
                             ) -> list[torch.Tensor]:
        """Sharer ``index`` alone ranking each prompt's choices from the prompt it read in ``batch``: the same
        cloze score as ``choice_scores`` (and as ``c2c eval``'s ``sharer`` method), one (k_i,) tensor per prompt.

        Reads the sharer K/V that fusion reads (``sharer_caches``), so a training step runs each sharer over its
        prompt once."""
        sharer = self.sharers[index]
        kv = self.sharer_caches(batch)[index]
        prefix = kvcache.cache_from_kv([(k[:, :, :-1], v[:, :, :-1]) for k, v in kv])  # S - 1 positions
        sums, _ = passes.continuation_logprobs(sharer.model, sharer.tokenizer, batch.sharer_ids[index],
                                                batch.sharer_mask[index], prefix, choices)
        return passes.per_character(sums, choices)

    @torch.no_grad()
    def generate(self, prompts: Prompt | Sequence[Prompt], max_new_tokens: int = 128, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int | None = None,
                 stop: Sequence[str] | None = None, streamer=None, fuse: bool = True,
                 sharer_prompts: Sequence[Prompt] | None = None, sharer_contexts: Sequence | str | None = None,
                 prepared: Batch | None = None, prefill_chunks: passes.Chunks | None = None,
                 **generate_kwargs) -> list[str]:
        """Fused prefill, then the receiver's stock ``generate`` decodes from the fused cache.

        ``sharer_contexts``: a context only the sharers read, per prompt (see ``prepare``), as text or as read
        before (``read_context``); with fusion off the receiver answers without it, exactly as alone.
        ``generate_kwargs`` go to ``transformers`` ``generate`` (e.g. ``stopping_criteria``). ``prepared``: the batch
        ``prepare`` made of these prompts (and contexts), so that they are not tokenized again (the server prepares
        each batch once, on its model thread).
        ``prefill_chunks``: prefill in pieces (see ``passes.Chunks``)."""
        single = isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], dict))
        prompts = [prompts] if single else list(prompts)
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if isinstance(sharer_contexts, (str, TranslatedContext)):
            sharer_contexts = [sharer_contexts] * len(prompts)
        contexts = sharer_contexts if fuse else None
        batch = prepared if prepared is not None else self.prepare(
            prompts, sharer_prompts=sharer_prompts, max_new_tokens=max_new_tokens, sharer_contexts=contexts)
        batch = batch.to(self.device)
        cache = self.prefill(batch, fuse=fuse, chunks=prefill_chunks)
        tokenizer = self.receiver.tokenizer
        sampling = dict(temperature=temperature, top_p=top_p, top_k=top_k) if do_sample else {}
        new = passes.decode(self.receiver.model, tokenizer, batch.input_ids, batch.attention_mask, cache,
                             max_new_tokens, stop, do_sample=do_sample, streamer=streamer, **sampling,
                             **generate_kwargs)
        return tokenizer.batch_decode(new, skip_special_tokens=True)

    def to(self, device: str | torch.device) -> "C2CModel":
        """Move the fusers and every model this pair holds (the receiver and sharers given to it, which the
        caller shares) to ``device``. Only a device: the fusers keep float32 master weights and compute in the
        models' dtype; for another dtype, load the models in it."""
        if isinstance(device, torch.dtype) or not isinstance(device, (str, torch.device)):
            raise TypeError(f"C2CModel.to takes a device, got {device!r}; load the models in another dtype "
                            "(load_model(spec, dtype) or --dtype) instead of casting the pair")
        for model in [self.receiver, *self.sharers]:
            model.model.to(device)
        self.context_memo.clear()
        return super().to(device)

    @property
    def device(self) -> torch.device:
        return self.receiver.model.device
