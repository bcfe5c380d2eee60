"""The checkpoint's config: which pair a fuser belongs to and how to rebuild it, validated, round-tripping JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.models import LoadedModel
from ..core.validate import check_known_keys, check_types
from ..translator.config import TranslatorConfig
from .fuser import FuserConfig

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
