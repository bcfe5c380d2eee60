"""The checkpoint's config: which pair a fuser belongs to and how to rebuild it (``C2CConfig``, ``SharerConfig``,
the fuser network's ``FuserConfig``), validated, round-tripping JSON. No torch: configs and recipes load without it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from typing import TYPE_CHECKING

from ..core.names import DTYPE_NAMES
from ..core.validate import above, at_least, check_known_keys, check_ranges, check_types, within
from ..translator.config import TranslatorConfig

if TYPE_CHECKING:
    from ..core.models import LoadedModel

@dataclass
class FuserConfig:
    hidden_size: int = 128  # the reference uses 1024 (~17M parameters per layer); 128 trains on a CPU
    intermediate_size: int = 128
    num_layers: int = 3  # the projection branch has num_layers - 2 FFN blocks, as in the reference
    dropout: float = 0.1
    # The paper feeds the fuser (sharer K/V, receiver K/V). False feeds the sharer's K/V alone: the fuser can
    # then no longer compute a function of the receiver's own cache (act as a plain adapter), so whatever
    # it adds is computed from what the sharer read.
    receiver_input: bool = True
    # The paper feeds keys as each model cached them, rotated by the positions they sit at. True removes each
    # model's rotary first and applies the receiver's to the key residual, so the fuser maps position-free keys
    # (the translator's space) and does not have to learn two models' rotations.
    position_free: bool = False
    zero_init: bool = True  # zero the projection's output layer: the untrained fuser changes nothing
    gate_noise: str = "logistic"  # "logistic" (binary Concrete), "gumbel" (the reference's) or "none"
    straight_through: bool = True  # forward with the hard gate, backward through the relaxed one
    temperature_start: float = 1.0
    temperature_end: float = 0.001
    storage_dtype: str = "float32"  # how the weights are saved; they train and compute in float32 either way

    def __post_init__(self):
        check_types(self, ValueError, "fuser ")
        check_ranges(self, FUSER_RANGES, ValueError, "fuser ")
        if self.storage_dtype not in DTYPE_NAMES:
            raise ValueError(f"fuser storage_dtype {self.storage_dtype!r} is unknown; expected one of "
                             f"{sorted(DTYPE_NAMES)}")
        if self.gate_noise not in ("logistic", "gumbel", "none"):
            raise ValueError(f"gate_noise must be 'logistic', 'gumbel' or 'none', got {self.gate_noise!r}")
        if self.temperature_end > self.temperature_start:
            raise ValueError("gate temperatures must satisfy 0 < temperature_end <= temperature_start, got "
                             f"{self.temperature_start} -> {self.temperature_end}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FuserConfig":
        check_known_keys(data, cls, ValueError, "fuser config ")
        return cls(**data)


FUSER_RANGES = {"hidden_size": at_least(1, 128), "intermediate_size": at_least(1, 128),
                "num_layers": at_least(2, 3),  # input trunk + output
                "dropout": within(0, 1, 0.1, high_open=True), "temperature_start": above(0, 1.0),
                "temperature_end": above(0, 0.001)}


FORMAT_VERSION = 2  # 2: optional context translators, optional fusers
CONFIG_NAME = "c2c_config.json"
WEIGHTS_NAME = "fuser.safetensors"


class CheckpointError(ValueError):
    """A fuser checkpoint that cannot be used as given; the message says why and what to do."""


@dataclass
class SharerConfig:
    model: str
    shape: dict
    layer_map: list[int]
    token_alignment: str = "offsets"
    # with a translator: the longest context, in this sharer's tokens, its map was fitted (or trained) on; a longer
    # one is translated with a warning (None: not recorded, a checkpoint from before issue 31)
    fitted_context_tokens: int | None = None
    # with a translator: the sharer layers each receiver layer's map reads (None: a checkpoint from before layer
    # types counted, whose maps read the window around their partner; see translator.source_layers)
    translator_sources: list[list[int]] | None = None

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
            hint = "; was it written by another program, or edited by hand?"
            check_known_keys(data, cls, ValueError, hint=hint)
            for sharer in data["sharers"]:
                check_known_keys(sharer, SharerConfig, ValueError, "sharer ", hint)
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


def shape_dict(model: LoadedModel) -> dict:
    return asdict(model.shape)


def check_shape(role: str, model: LoadedModel, expected: dict) -> None:
    actual = shape_dict(model)
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
