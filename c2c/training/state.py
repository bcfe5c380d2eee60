"""A training run's folder: the resumable trainer state (weights that train, optimizer, scheduler, RNG states,
step; safetensors + JSON, never pickle) and the rule that a run never overwrites another's folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .recipe import RecipeError


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in module.named_parameters() if p.requires_grad}


def save_trainer_state(output: Path, trainable: torch.nn.Module, optimizer, scheduler, step: int) -> None:
    """Write the resumable state (trained weights, optimizer, scheduler, RNG states, step) to
    ``output/checkpoint``: staged in a folder of its own and swapped in whole, so a crash keeps the last one."""
    staging = output / "checkpoint.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(trainable_state(trainable), str(staging / "trainable.safetensors"))
    optimizer_tensors, optimizer_meta = flatten_optimizer(optimizer)
    save_file(optimizer_tensors, str(staging / "optimizer.safetensors"))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(staging / "rng.safetensors"))
    state = {"step": step, "optimizer": optimizer_meta, "scheduler": scheduler.state_dict()}
    (staging / "trainer_state.json").write_text(json.dumps(state))
    previous = output / "checkpoint.previous"
    shutil.rmtree(previous, ignore_errors=True)
    if (output / "checkpoint").exists():
        (output / "checkpoint").rename(previous)
    staging.rename(output / "checkpoint")
    shutil.rmtree(previous, ignore_errors=True)


def load_trainer_state(folder: Path, trainable: torch.nn.Module, optimizer, scheduler, device: torch.device) -> int:
    """Restore what ``save_trainer_state`` wrote into the given modules; returns the step to continue from."""
    if not (folder / "trainer_state.json").is_file():
        raise RecipeError(f"cannot resume: {folder} holds no checkpoint (one is written every save_every steps); "
                          "start the run afresh with --overwrite")
    weights = load_file(str(folder / "trainable.safetensors"))
    named = {n: p for n, p in trainable.named_parameters() if p.requires_grad}
    if set(weights) != set(named):
        raise RecipeError(f"checkpoint {folder} does not match this recipe's trainable parameters")
    with torch.no_grad():
        for name, tensor in weights.items():
            named[name].copy_(tensor)
    state = json.loads((folder / "trainer_state.json").read_text())
    optimizer.load_state_dict(unflatten_optimizer(load_file(str(folder / "optimizer.safetensors")),
                                                  state["optimizer"], device))
    scheduler.load_state_dict(state["scheduler"])
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state["step"]


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as safetensors-ready tensors plus JSON metadata (no pickle)."""
    state = optimizer.state_dict()
    tensors = {f"{index}.{key}": value.detach().cpu().contiguous()
               for index, entry in state["state"].items() for key, value in entry.items()}
    return tensors, {"param_groups": state["param_groups"]}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict, device: torch.device) -> dict:
    state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor if key == "step" else tensor.to(device)
    return {"state": state, "param_groups": meta["param_groups"]}


def check_output(output: Path, resume: bool, overwrite: bool, main: bool = True) -> None:
    """A run never overwrites another's folder by accident: a non-empty output folder needs ``resume`` (continue
    that run) or ``overwrite`` (start it afresh; only a c2c run folder is ever removed). The refusal names only
    what works for that folder."""
    if resume or not output.exists():
        return
    if not output.is_dir():
        raise RecipeError(f"output {output} is a file, not a folder; give a new or empty folder as output")
    present = sorted(p.name for p in output.iterdir())
    if not present:
        return
    holds = f"output folder {output} already holds {', '.join(present[:4])}{' ...' if len(present) > 4 else ''}"
    is_run = (output / "train_config.json").is_file()
    if not is_run:
        raise RecipeError(f"{holds}, and it is not a c2c run folder (no train_config.json), so it is never "
                          "overwritten: choose another --output, or empty that folder yourself")
    if not overwrite:
        if resumable(output):
            todo = f"Continue it with --resume {output}, choose another --output, or start afresh with --overwrite"
        else:
            todo = "It saved no checkpoint to resume from: start it afresh with --overwrite, or choose another --output"
        raise RecipeError(f"{holds}: a finished or interrupted run is never overwritten. {todo}")
    if main:
        shutil.rmtree(output)


def resumable(output: Path) -> bool:
    """Whether ``c2c train --resume`` can continue the run in ``output``: it saved a trainer checkpoint, or it is a
    translator run (whose closed-form fit is redone, or whose phase 2 starts, without one)."""
    if (output / "checkpoint" / "trainer_state.json").is_file() or (output / "checkpoint.previous").is_dir():
        return True
    try:
        return json.loads((output / "train_config.json").read_text()).get("method") == "translator"
    except (OSError, ValueError, AttributeError):
        return False


def clean_run_folder(output: Path) -> list[str]:
    """Before a run resumes: remove what an interrupted write left in its folder (the temporaries of
    ``atomic_write``, ``NAME.*.tmp``, and a half-staged ``checkpoint.partial``), and put back a checkpoint that
    ``save_trainer_state`` had moved aside when it was killed before swapping the new one in. Returns the names."""
    if not (output / "train_config.json").is_file():
        return []
    cleaned = [p for p in output.rglob("*.tmp") if p.is_file() and "." in p.name[:-4]]
    for path in cleaned:
        path.unlink()
    partial = output / "checkpoint.partial"
    if partial.is_dir():
        shutil.rmtree(partial)
        cleaned.append(partial)
    previous = output / "checkpoint.previous"
    if previous.is_dir():
        if (output / "checkpoint").is_dir():
            shutil.rmtree(previous)
        else:
            previous.rename(output / "checkpoint")
        cleaned.append(previous)
    return [str(p.relative_to(output)) for p in cleaned]
