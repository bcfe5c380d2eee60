"""Convert fusers trained with the reference implementation (github.com/thu-nics/C2C, package ``rosetta``).

The reference's training script (script/train/SFT_train.py) writes a run folder::

    config.json                 a copy of the training recipe: model.base_model (receiver), model.teacher_model
                                (sharer), model.is_do_alignment, model.alignment_strategy, model.projector, ...
    final/ (or checkpoint-N/)   projector_{i}.pt    state dict of C2CProjector i (rosetta/model/projector.py)
                                projector_{i}.json  {"class": "C2CProjector", "init_args": {...}}
                                projector_config.json  {target_model: {source_model: {target_layer:
                                                        [[source_layer, projector_index], ...]}}} (string keys)

A C2CProjector is our LayerFuser with other names (per branch X in key, value; see ``reference_names``) and
two scalar gate logits where we keep one (2,) tensor; its training-time gate is ``gate_noise="gumbel"`` without
straight-through. What c2c cannot run as the reference trained it (another projector class, several sharer
layers per receiver layer, ``include_response``) is refused with a CheckpointError. The .pt files are read with
``torch.load(weights_only=True)`` only: nothing in a reference folder can run code here.
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch

from ..core.models import LoadedModel, load_model
from ..core.names import RENAMED_ALIGNMENTS
from ..model.config import C2CConfig, CheckpointError, SharerConfig
from ..model.config import FuserConfig
from ..model.pair import C2CModel

PROJECTOR_CLASS = "C2CProjector"
# C2CProjector.__init__'s arguments and defaults; projector_{i}.json lists only the ones the recipe passed.
REFERENCE_DEFAULTS = dict(intermediate_dim=1024, hidden_dim=1024, num_layers=3, dropout=0.1, initial_temperature=1.0,
                          final_temperature=0.001, anneal_steps=1929, zero_init=False)
SHAPE_ARGS = ("source_dim", "target_dim", "source_num_heads", "target_num_heads")  # head dims and KV heads
IGNORED_ARGS = ("anneal_steps", "dtype")  # the schedule is re-derived by c2c's trainer; weights load as float32
GATES = ("key_gate_logit", "value_gate_logit")  # scalars -> LayerFuser.gate_logits (2,) = (K, V)
TRAINING_STATE = ("gate_temperature",)  # the annealed gate temperature buffer: not needed to run the fuser


def reference_names(num_layers: int) -> dict[str, str]:
    """C2CProjector parameter name -> LayerFuser parameter name, for one receiver layer (gates aside)."""
    names = {}
    for x in ("key", "value"):
        ffn = {f"{x}_mlp1.blocks.0": f"{x}.trunk", f"{x}_scalar_mlp2.blocks.0": f"{x}.weight.0",
               **{f"{x}_proj_mlp2.blocks.{i}": f"{x}.projection.{i}" for i in range(num_layers - 2)}}
        for ref, ours in ffn.items():  # StandardFFNLayer(norm, w1, w2) -> FFNBlock(norm, up, down)
            names.update({f"{ref}.{a}.weight": f"{ours}.{b}.weight" for a, b in (("norm", "norm"), ("w1", "up"),
                                                                                 ("w2", "down"))})
        linear = {f"{x}_in": f"{x}.input", f"{x}_proj_out": f"{x}.projection.{num_layers - 2}",
                  f"{x}_scalar_head": f"{x}.weight.1"}
        for ref, ours in linear.items():
            names.update({f"{ref}.{p}": f"{ours}.{p}" for p in ("weight", "bias")})
    return names


def projector_folder(reference_dir: str | Path) -> Path:
    """The folder holding projector_config.json: the one given, or its final/ (a whole training run)."""
    reference_dir = Path(reference_dir)
    for folder in (reference_dir, reference_dir / "final"):
        if (folder / "projector_config.json").is_file():
            return folder
    raise CheckpointError(f"{reference_dir} is not a reference C2C checkpoint: no projector_config.json in it or in "
                          "its final/ folder (give the run folder, or its final/ or checkpoint-N/ folder)")


def read_recipe(reference_dir: str | Path) -> dict:
    """The ``model`` section of the run's config.json (beside the projectors or one folder up); {} if absent."""
    folder = projector_folder(reference_dir)
    for path in (folder / "config.json", folder.parent / "config.json"):
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError:
                import yaml  # the reference copies a YAML recipe to config.json too, and reads it with yaml
                data = yaml.safe_load(path.read_text())
            if isinstance(data, dict) and isinstance(data.get("model"), dict):
                return data["model"]
    return {}


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); the reference checkpoint is damaged") from error


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """A .pt file that must hold a plain state dict (str -> tensor); nothing else is unpickled."""
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; a raw pickle or anything else is refused
        raise CheckpointError(f"{path} is not a file written by torch.save (a raw pickle, or another format); c2c "
                              "reads only state dicts of tensors saved with torch.save(projector.state_dict(), path)")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's concern
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # weights_only refuses pickled objects; truncated files fail here too
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        detail = f"it pickles a {found.group(1)} object" if found else \
            f"torch.load with weights_only=True refused it: {str(error).strip().splitlines()[0][:200]}"
        raise CheckpointError(f"{path} is not a plain state dict of tensors ({detail}); c2c never unpickles code: "
                              "save torch.save(projector.state_dict(), path) instead") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a plain state dict of tensors: it holds a {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path} is not a plain state dict of tensors: {bad[0]!r} holds a "
                              f"{type(state[bad[0]]).__name__}")
    return state


def read_layer_sources(folder: Path, receiver_layers: int, sharer_layers: int) -> list[tuple[int, int]]:
    """Per receiver layer, (sharer layer, projector index) from projector_config.json."""
    path = folder / "projector_config.json"
    try:
        (targets,) = read_json(path).values()  # one receiver: {"0": {source: {...}}}
    except (AttributeError, ValueError) as error:
        raise CheckpointError(f"{path} is not a reference projector config with one receiver ({error})") from error
    if len(targets) != 1:
        raise CheckpointError(f"{path} maps {len(targets)} sharers; the reference trains one sharer per run: "
                              "convert each sharer's folder on its own")
    (layers,) = targets.values()
    sources = {}
    for layer, pairs in layers.items():
        t = int(layer)
        if not 0 <= t < receiver_layers:
            raise CheckpointError(f"{path} maps receiver layer {t}, but the receiver has {receiver_layers} layers; "
                                  "was it trained for another receiver?")
        if len(pairs) != 1:
            raise CheckpointError(f"{path}: receiver layer {t} reads {len(pairs)} (sharer layer, projector) pairs; "
                                  "c2c fuses one sharer layer per receiver layer")
        source, projector = (int(v) for v in pairs[0])
        if not 0 <= source < sharer_layers:
            raise CheckpointError(f"{path}: receiver layer {t} reads sharer layer {source}, but the sharer has "
                                  f"{sharer_layers} layers; was it trained for another sharer?")
        sources[t] = (source, projector)
    missing = [t for t in range(receiver_layers) if t not in sources]
    if missing:
        raise CheckpointError(f"{path} has no projector for receiver layer(s) {missing}; c2c needs one per layer")
    return [sources[t] for t in range(receiver_layers)]


def read_fuser_config(folder: Path, projectors: Sequence[int], recipe: dict,
                      receiver: LoadedModel, sharer: LoadedModel) -> FuserConfig:
    """FuserConfig from projector_{i}.json (all must agree), else from the recipe's projector section."""
    found = {}
    for p in sorted(set(projectors)):
        path = folder / f"projector_{p}.json"
        if path.is_file():
            payload = read_json(path)
            found[path.name] = (payload.get("class"), payload.get("init_args", {}))
    if not found:
        section = recipe.get("projector")
        if not isinstance(section, dict):
            raise CheckpointError(f"{folder} has no projector_{{i}}.json and no config.json with model.projector: "
                                  "the fuser's sizes are unknown")
        found["config.json"] = (section.get("type"), section.get("params", {}))
    (name, (cls, args)), *others = found.items()
    for other, (other_cls, other_args) in others:
        if (other_cls, other_args) != (cls, args):
            raise CheckpointError(f"{other} differs from {name}; c2c uses one fuser configuration for all layers")
    if str(cls).lower() != PROJECTOR_CLASS.lower():
        raise CheckpointError(f"{name}: projector class {cls!r} is not {PROJECTOR_CLASS}, the only one c2c converts")
    unknown = set(args) - set(REFERENCE_DEFAULTS) - set(SHAPE_ARGS) - set(IGNORED_ARGS)
    if unknown:
        raise CheckpointError(f"{name}: {PROJECTOR_CLASS} arguments {sorted(unknown)} have no c2c equivalent")
    expected = dict(source_dim=sharer.shape.head_dim, source_num_heads=sharer.shape.num_kv_heads,
                    target_dim=receiver.shape.head_dim, target_num_heads=receiver.shape.num_kv_heads)
    wrong = {k: (args[k], v) for k, v in expected.items() if k in args and args[k] != v}
    if wrong:
        raise CheckpointError(f"{name} was trained for other models: (checkpoint, given) = {wrong}")
    args = {**REFERENCE_DEFAULTS, **args}
    try:
        return FuserConfig(hidden_size=args["hidden_dim"], intermediate_size=args["intermediate_dim"],
                           num_layers=args["num_layers"], dropout=args["dropout"], receiver_input=True,
                           zero_init=bool(args["zero_init"]), gate_noise="gumbel", straight_through=False,
                           temperature_start=args["initial_temperature"], temperature_end=args["final_temperature"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{name}: {error}") from error


def convert_layer(path: Path, layer: int, names: dict[str, str], expected: dict[str, torch.Tensor]
                  ) -> dict[str, torch.Tensor]:
    """One projector_{i}.pt -> the LayerFuser state of receiver ``layer``, checked against ``expected``."""
    state = load_state(path)
    where = f"receiver layer {layer} ({path.name})"
    unexpected = sorted(set(state) - set(names) - set(GATES) - set(TRAINING_STATE))
    missing = sorted(set(names) - set(state)) + [g for g in GATES if g not in state]
    if unexpected or missing:
        raise CheckpointError(f"{where} is not a {PROJECTOR_CLASS} of this configuration: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}")
    for ref in [*names, *GATES]:
        shape = expected[names[ref]].shape if ref in names else torch.Size([])
        if state[ref].shape != shape:
            raise CheckpointError(f"{where}: {ref} has shape {tuple(state[ref].shape)}, expected {tuple(shape)} "
                                  "for this pair and fuser configuration")
        if not torch.isfinite(state[ref]).all():
            raise CheckpointError(f"{where}: {ref} holds non-finite values; the checkpoint is damaged")
    out = {ours: state[ref] for ref, ours in names.items()}
    out["gate_logits"] = torch.stack([state[g] for g in GATES])  # (2,) = (K, V)
    return out


def convert_reference(reference_dir: str | Path, output_dir: str | Path, receiver: LoadedModel | str | None = None,
                      sharers: Sequence[LoadedModel | str] | LoadedModel | str | None = None,
                      token_alignment: str | None = None, dtype: str = "float32", device: str = "cpu") -> Path:
    """Write the reference fuser in ``reference_dir`` as a c2c checkpoint in ``output_dir``; returns it.

    ``receiver``/``sharers`` default to the models the run's config.json names. ``token_alignment`` defaults to
    what the reference did: ``receiver_ids`` without token alignment (the sharer reads the receiver's own ids,
    chat template included), else its strategy as ``reencode_first``/``reencode_longest`` (the same token rule;
    the reference's sharer also reads its own template sections, which c2c's re-encoding leaves out).
    """
    folder = projector_folder(reference_dir)
    recipe = read_recipe(folder)
    if recipe.get("include_response"):
        raise CheckpointError(f"{reference_dir} was trained with include_response (it also fuses each decoded "
                              "token); c2c fuses the prompt only, so it would not run this fuser as trained")
    named_receiver, named_sharer = recipe.get("base_model"), recipe.get("teacher_model")
    receiver = receiver or named_receiver
    sharers = sharers or ([named_sharer] if named_sharer else None)
    if receiver is None or sharers is None:
        raise CheckpointError(f"{reference_dir} names no models (no config.json with model.base_model and "
                              "model.teacher_model): give the receiver and the sharer (--receiver, --sharer)")
    sharers = [sharers] if isinstance(sharers, (str, LoadedModel)) else list(sharers)
    if len(sharers) != 1:
        raise CheckpointError(f"a reference run fuses one sharer, {len(sharers)} were given")
    receiver = load_model(receiver, dtype, device) if isinstance(receiver, str) else receiver
    sharer = load_model(sharers[0], dtype, device) if isinstance(sharers[0], str) else sharers[0]

    sources = read_layer_sources(folder, receiver.shape.num_layers, sharer.shape.num_layers)
    fuser = read_fuser_config(folder, [p for _, p in sources], recipe, receiver, sharer)
    if token_alignment is None:
        strategy = recipe.get("alignment_strategy", "first")
        token_alignment = RENAMED_ALIGNMENTS.get(strategy, strategy) if recipe.get("is_do_alignment") else "receiver_ids"
    config = C2CConfig(receiver.name, asdict(receiver.shape),
                       [SharerConfig(sharer.name, asdict(sharer.shape), [s for s, _ in sources], token_alignment)],
                       fuser, chat_template=True)
    pair = C2CModel(receiver, [sharer], config)

    names = reference_names(fuser.num_layers)
    state = {}
    for layer, (_, projector) in enumerate(sources):
        path = folder / f"projector_{projector}.pt"
        if not path.is_file():
            raise CheckpointError(f"receiver layer {layer}: {path} is missing (projector_config.json points to it)")
        expected = pair.fusers[0][layer].state_dict()
        state.update({f"0.{layer}.{k}": v for k, v in convert_layer(path, layer, names, expected).items()})
    pair.fusers.load_state_dict(state, strict=True)  # every name and shape was checked above
    return pair.save_pretrained(output_dir)
