"""Token rows as tensors: padding rows to one width, their mask, and the positions a padded row's tokens take; a
tensor's in-place version, for caches keyed by the tensors they were computed from; a module's weights fingerprint, for
caches keyed by the weights they were computed with."""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def pad_rows(rows: Sequence[Sequence[int]], value: int, left: bool) -> torch.Tensor:
    """Token rows padded with ``value`` to one width (on the left for prompts that generation continues)."""
    width = max(len(r) for r in rows)
    padded = [([value] * (width - len(r)) + list(r)) if left else (list(r) + [value] * (width - len(r))) for r in rows]
    return torch.tensor(padded, dtype=torch.long)


def row_mask(rows: Sequence[Sequence[int]], left: bool) -> torch.Tensor:
    """The attention mask of ``pad_rows(rows, ..., left)``: 1 on each row's tokens, 0 on its padding."""
    return pad_rows([[1] * len(row) for row in rows], 0, left)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip padding, as ``generate`` computes them: (B, N) -> (B, N)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def tensor_version(tensor: torch.Tensor) -> object:
    """How often ``tensor`` was modified in place; tensors made under ``torch.inference_mode`` keep no count, so
    theirs is a fresh object, equal to nothing (a cache keyed by it misses: always correct)."""
    try:
        return tensor._version
    except RuntimeError:
        return object()


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha256 of a module's state (names, shapes, dtypes, bytes), 16 hex digits."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
