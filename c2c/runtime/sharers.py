"""Where a pair gets its sharers' K/V: ``SharerRun`` runs the sharers (the default), ``SharerKVStore`` keeps each
training example's on disk. Both are sharer-cache providers: ``provider(pair, batch)`` returns per sharer, per
layer (B, H_S, S_j, d_S) for a prepared batch.

The K/V store:

The sharer is frozen and the data fixed, so an example's sharer cache never changes: compute it once, reuse it
every epoch (and across runs on the same pair and data). Stored in float16 to halve the disk; the stored values
are used from the very first step, so runs with and without a warm store train identically. Bounded in size.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..core.cache import KV
from ..core.models import cache_dir
from ..core.runlog import atomic_write
from ..core.tensors import tensor_version, weights_fingerprint


class SharerCaches:
    """A sharer-cache provider. The last batch's K/V are kept: a step that reads them twice (the sharer's own
    choice scores, then fusion) gets them once. Frozen sharers make this exact.

    The last batch is recognised by its sharer input tensors themselves (the same objects, not modified in place
    since), never by their values: reading values would copy them from the GPU and wait for it on every prefill.
    A batch prepared again from the same prompts is another batch (its sharers run again); ``Batch.to`` a device it
    is already on keeps its tensors, so it stays the same batch."""

    def __init__(self):
        self._last: tuple[tuple, list[list[KV]]] | None = None

    @staticmethod
    def _key(batch) -> tuple:
        """The sharer inputs' identity: each tensor (held, so its id is never reused) and its in-place version."""
        return tuple((tensor, tensor_version(tensor)) for pair in zip(batch.sharer_ids, batch.sharer_mask) for tensor in pair)

    def _matches(self, key: tuple) -> bool:
        last = self._last[0] if self._last is not None else None
        return last is not None and len(last) == len(key) and all(
            tensor is seen and version == seen_version for (tensor, version), (seen, seen_version) in zip(key, last))

    def __call__(self, pair, batch, chunks=None) -> list[list[KV]]:
        """``chunks``: a ``passes.Chunks`` for the sharers' passes, when they run."""
        key = self._key(batch)
        if not self._matches(key):
            self._last = None  # the previous batch's K/V are not kept while the next ones are computed
            self._last = (key, self.compute(pair, batch, chunks))
        return self._last[1]

    def compute(self, pair, batch, chunks=None) -> list[list[KV]]:
        raise NotImplementedError


class SharerRun(SharerCaches):
    """Run each sharer over its input (the default provider)."""

    def compute(self, pair, batch, chunks=None) -> list[list[KV]]:
        return [pair.sharer_kv(index, ids, mask, chunks)
                for index, (ids, mask) in enumerate(zip(batch.sharer_ids, batch.sharer_mask))]


class SharerKVStore(SharerCaches):
    def __init__(self, folder: Path, max_bytes: int, dtype: torch.dtype = torch.float16):
        super().__init__()
        self.folder, self.max_bytes, self.dtype = folder, max_bytes, dtype
        folder.mkdir(parents=True, exist_ok=True)
        self.bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        self.hits = self.misses = self.over_budget = 0

    @classmethod
    def for_pair(cls, pair, max_gb: float) -> "SharerKVStore":
        # The sharers' weights, not only their names: a sharer rebuilt in the same folder gets a store of its own
        identity = json.dumps([[s.model, s.shape, s.token_alignment, weights_fingerprint(loaded.model)]
                               for s, loaded in zip(pair.config.sharers, pair.sharers)]
                              + [pair.config.chat_template], sort_keys=True)
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        return cls(cache_dir() / "sharer_kv" / digest, int(max_gb * 2**30))

    def _path(self, sharer: int, ids: torch.Tensor) -> Path:
        digest = hashlib.sha256(f"{sharer}:".encode() + ids.cpu().numpy().astype("int64").tobytes()).hexdigest()
        return self.folder / f"{digest[:32]}.safetensors"

    def _save(self, path: Path, layers: list[KV]) -> None:
        tensors = {f"{kind}{layer}": tensor.contiguous().cpu()
                   for layer, kv in enumerate(layers) for kind, tensor in zip("kv", kv)}
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.bytes + size > self.max_bytes:
            self.over_budget += 1
            return
        atomic_write(path, lambda temporary: save_file(tensors, temporary))
        self.bytes += path.stat().st_size  # as counted when a store opens its folder: the files, headers included

    def compute(self, pair, batch, chunks=None) -> list[list[KV]]:
        """From the store where possible; computed (and stored, within the budget) otherwise."""
        caches = []
        for sharer, (ids, mask) in enumerate(zip(batch.sharer_ids, batch.sharer_mask)):
            rows = [ids[b][mask[b].bool()] for b in range(ids.shape[0])]
            paths = [self._path(sharer, row) for row in rows]
            found = {b: _load(path) for b, path in enumerate(paths) if path.is_file()}
            missing = [b for b in range(len(rows)) if b not in found]
            self.hits += len(found)
            self.misses += len(missing)
            if missing:
                fresh = pair.sharer_kv(sharer, ids[missing], mask[missing], chunks)
                for i, b in enumerate(missing):
                    length = len(rows[b])  # left padding: the row's tokens are the last `length` positions
                    layers = [(k[i:i + 1, :, -length:].to(self.dtype), v[i:i + 1, :, -length:].to(self.dtype))
                              for k, v in fresh]
                    self._save(paths[b], layers)
                    found[b] = layers
            width = ids.shape[1]
            caches.append([tuple(torch.cat([_left_pad(found[b][layer][kind], width) for b in range(len(rows))])
                                 .to(ids.device) for kind in range(2))
                           for layer in range(len(found[0]))])
        return caches

    def report(self) -> dict:
        return {"folder": str(self.folder), "hits": self.hits, "misses": self.misses, "bytes": self.bytes,
                "max_bytes": self.max_bytes, "not_stored_over_budget": self.over_budget}


def _load(path: Path) -> list[KV]:
    tensors = load_file(str(path))
    return [(tensors[f"k{layer}"], tensors[f"v{layer}"]) for layer in range(len(tensors) // 2)]


def _left_pad(kv: torch.Tensor, width: int) -> torch.Tensor:
    """(1, H, n, d) -> (1, H, width, d) in float32, zeros on the left (padding positions are never read)."""
    return torch.nn.functional.pad(kv.float(), (0, 0, width - kv.shape[2], 0))
