"""A fuser's files: config + safetensors, only what trains, checked on load. Never pickle. (A training run's
resumable state is ``training.state``; fetching a folder from the Hub is ``model.hub``.)"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..core.runlog import atomic_write
from .config import CONFIG_NAME, WEIGHTS_NAME, C2CConfig, CheckpointError


def save_fuser(directory: Path, config: C2CConfig, weights: dict[str, torch.Tensor]) -> None:
    """Write the weights and the config, each atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / WEIGHTS_NAME, lambda path: save_file(weights, path, metadata={"format": "c2c"}))
    atomic_write(directory / CONFIG_NAME,
                 lambda path: Path(path).write_text(json.dumps(config.to_dict(), indent=2) + "\n"))


def read_fuser_weights(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, checked against the names and shapes of ``expected`` and for finiteness."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; a c2c checkpoint folder holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path} is corrupt or truncated ({error}); save or train the fuser again") from error
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = [k for k in expected.keys() & weights.keys() if expected[k].shape != weights[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{path} does not fit this pair's fusers: missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}, wrong shape {wrong[:3]}; was it saved for another pair?")
    for name, tensor in weights.items():
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path} holds non-finite values in {name}; the checkpoint is damaged")
    return weights
