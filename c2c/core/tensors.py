"""Token rows as tensors: padding rows to one width, and the positions a padded row's tokens take."""

from __future__ import annotations

from typing import Sequence

import torch


def pad_rows(rows: Sequence[Sequence[int]], value: int, left: bool) -> torch.Tensor:
    """Token rows padded with ``value`` to one width (on the left for prompts that generation continues)."""
    width = max(len(r) for r in rows)
    padded = [([value] * (width - len(r)) + list(r)) if left else (list(r) + [value] * (width - len(r))) for r in rows]
    return torch.tensor(padded, dtype=torch.long)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip padding, as ``generate`` computes them: (B, N) -> (B, N)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
