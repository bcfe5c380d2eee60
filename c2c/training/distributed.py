"""Data parallelism over ``torch.distributed``: which process this is, and the sums that cross processes (only
the trained gradients and a few counts). torchrun sets WORLD_SIZE/RANK; one process otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..core.models import parse_device


@dataclass
class Runtime:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> Runtime:
    """torchrun sets WORLD_SIZE/RANK: gloo on CPU, nccl on GPU. One process otherwise. A GPU ``device`` without
    an index means this process's GPU (LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = parse_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if world == 1:
        return Runtime(device=device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(dist.get_rank(), world, device)


def all_reduce_gradients(module: torch.nn.Module, runtime: Runtime) -> None:
    """Data parallelism: sum the trainable gradients of every process (each loss is already divided by the
    global token count), in one flat message. Only the fuser's (or adapter's) gradients cross processes."""
    if runtime.world == 1:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    for grad, chunk in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(chunk.view_as(grad))


def global_count(value: int, runtime: Runtime) -> int:
    return int(global_sum(float(value), runtime))


def global_sum(value: float, runtime: Runtime) -> float:
    if runtime.world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=runtime.device)
    dist.all_reduce(tensor)
    return float(tensor.item())
