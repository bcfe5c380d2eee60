"""The C2C fuser: one small network per receiver layer that turns (sharer K/V, receiver K/V) into a residual.

Per layer, a K branch and a V branch with separate weights (method doc section 2.2):
concat(sharer, receiver) -> linear -> residual FFN trunk -> projection (FFN blocks + linear) and per-head
weight (FFN block + linear + sigmoid); a scalar gate per branch selects the layer. The fuser returns the
residual ``gate * weight * projection``; the caller adds it to the receiver cache. ``receiver_input=False``
drops the receiver's K/V from the input (an ablation: the residual is then computed from the sharer alone).

Fixes over the reference: the training gate uses logistic noise (binary Concrete), so its open probability
at low temperature is ``sigmoid(logit)`` and matches the inference rule ``logit > 0``; an optional
straight-through estimator trains with the hard gate; the temperature schedule is set by the trainer from
the real number of optimizer steps; ``zero_init`` makes the untrained fuser an exact no-op.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from .config import FuserConfig


class FFNBlock(nn.Module):
    """Pre-norm residual MLP: ``x + dropout(W2 gelu(W1 rmsnorm(x)))``, bias-free."""

    def __init__(self, size: int, intermediate: int, dropout: float):
        super().__init__()
        self.norm = nn.RMSNorm(size, eps=1e-6)
        self.up = nn.Linear(size, intermediate, bias=False)
        self.down = nn.Linear(intermediate, size, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dropout(self.down(F.gelu(self.up(self.norm(x)))))


class FuserBranch(nn.Module):
    """Maps per-token (sharer, receiver) features to a projection and one weight per receiver head."""

    def __init__(self, sharer_dim: int, receiver_heads: int, receiver_head_dim: int, config: FuserConfig):
        super().__init__()
        hidden, intermediate = config.hidden_size, config.intermediate_size
        self.receiver_heads, self.receiver_head_dim = receiver_heads, receiver_head_dim
        receiver_dim = receiver_heads * receiver_head_dim
        self.receiver_input = config.receiver_input
        self.input = nn.Linear(sharer_dim + (receiver_dim if config.receiver_input else 0), hidden)
        self.trunk = FFNBlock(hidden, intermediate, config.dropout)
        self.projection = nn.Sequential(
            *[FFNBlock(hidden, intermediate, config.dropout) for _ in range(config.num_layers - 2)],
            nn.Linear(hidden, receiver_dim),
        )
        self.weight = nn.Sequential(FFNBlock(hidden, hidden, config.dropout), nn.Linear(hidden, receiver_heads))
        if config.zero_init:
            nn.init.zeros_(self.projection[-1].weight)
            nn.init.zeros_(self.projection[-1].bias)

    def forward(self, sharer: torch.Tensor, receiver: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sharer (B, H_S, N, d_S), receiver (B, H_R, N, d_R) -> projection (B, H_R, N, d_R), weight (B, H_R, N, 1)."""
        batch, _, tokens, _ = receiver.shape
        flat = _flatten_heads(sharer)  # (B, N, H_S*d_S)
        if self.receiver_input:
            flat = torch.cat([flat, _flatten_heads(receiver)], dim=-1)  # (B, N, H_S*d_S + H_R*d_R)
        hidden = self.trunk(self.input(flat))  # (B, N, h)
        projection = self.projection(hidden).view(batch, tokens, self.receiver_heads, self.receiver_head_dim)
        weight = torch.sigmoid(self.weight(hidden))  # (B, N, H_R)
        return projection.transpose(1, 2), weight.transpose(1, 2).unsqueeze(-1)


def _flatten_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, tokens, dim = x.shape  # (B, H, N, d) -> (B, N, H*d), head-major
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


class LayerFuser(nn.Module):
    """The fuser of one receiver layer: K and V branches and their gates."""

    def __init__(self, sharer_heads: int, sharer_head_dim: int, receiver_heads: int, receiver_head_dim: int,
                 config: FuserConfig):
        super().__init__()
        self.config = config
        sharer_dim = sharer_heads * sharer_head_dim
        self.key = FuserBranch(sharer_dim, receiver_heads, receiver_head_dim, config)
        self.value = FuserBranch(sharer_dim, receiver_heads, receiver_head_dim, config)
        self.gate_logits = nn.Parameter(torch.zeros(2))  # (K, V)
        self.register_buffer("temperature", torch.tensor(config.temperature_start), persistent=False)

    def open_gates(self) -> torch.Tensor:
        """Inference gates (K, V), bool: open iff the logit is positive (the one place this rule is written)."""
        return self.gate_logits.detach() > 0

    def _gate(self, index: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        logit = self.gate_logits[index].to(like.dtype)
        if not self.training:
            return self.open_gates()[index].to(like.dtype)
        if self.config.gate_noise == "none":
            noise = torch.zeros(shape, dtype=like.dtype, device=like.device)
        else:
            uniform = torch.rand(shape, dtype=like.dtype, device=like.device).clamp(1e-6, 1 - 1e-6)
            if self.config.gate_noise == "logistic":
                noise = torch.log(uniform) - torch.log1p(-uniform)
            else:
                noise = -torch.log(-torch.log(uniform))
        soft = torch.sigmoid((logit + noise) / self.temperature.to(like.dtype))
        if not self.config.straight_through:
            return soft
        return _HardGate.apply(soft)

    def forward(self, sharer_key: torch.Tensor, sharer_value: torch.Tensor, receiver_key: torch.Tensor,
                receiver_value: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Residuals for the receiver's keys and values, (B, H_R, N, d_R) each; None where the gate is shut."""
        residuals = []
        for index, (branch, sharer, receiver) in enumerate(
                ((self.key, sharer_key, receiver_key), (self.value, sharer_value, receiver_value))):
            if not self.training and self.gate_logits[index] <= 0:
                residuals.append(None)  # a shut gate is exactly "the receiver alone": skip the work
                continue
            projection, weight = branch(sharer.to(receiver.dtype), receiver)
            gate = self._gate(index, weight.shape, receiver)  # (B, H_R, N, 1) in training, scalar at inference
            residuals.append(gate * weight * projection)
        return residuals[0], residuals[1]


class BranchStack:
    """Runs many same-shaped fuser branches as one vectorised call, for inference.

    ``torch.func.vmap`` over their stacked weights turns the 2 x layers small branches of a forward into a few
    batched kernels; the stacked weights are cached until a branch's weights change (tensor versions).
    """

    def __init__(self):
        self._key = None
        self._state = None
        self._base = None

    def __call__(self, branches: list[FuserBranch], sharer: torch.Tensor, receiver: torch.Tensor) -> torch.Tensor:
        """sharer (L, B, H_S, N, d_S), receiver (L, B, H_R, N, d_R) -> ungated residuals (L, B, H_R, N, d_R)."""
        key = tuple((id(b), tuple(p._version for p in b.parameters())) for b in branches)
        if key != self._key:
            self._state = torch.func.stack_module_state(branches)
            self._base = copy.deepcopy(branches[0]).to("meta")
            self._key = key
        params, buffers = self._state

        def run(p, b, s, r):
            return torch.func.functional_call(self._base, (p, b), (s, r))
        projection, weight = torch.vmap(run)(params, buffers, sharer, receiver)
        return weight * projection


class _HardGate(torch.autograd.Function):
    """Straight-through estimator: exactly 0/1 forward, the relaxed gate's gradient backward."""

    @staticmethod
    def forward(ctx, soft: torch.Tensor) -> torch.Tensor:
        return (soft > 0.5).to(soft.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


def temperature_at(step: int, total_steps: int, config: FuserConfig) -> float:
    """Geometric annealing from temperature_start to temperature_end over the real number of optimizer steps."""
    progress = min(max(step, 0) / max(total_steps, 1), 1.0)
    return config.temperature_start * math.exp(progress * math.log(config.temperature_end / config.temperature_start))
