"""Training recipes: a validated ``TrainConfig`` read from YAML, where an ablation is a few keys over a base
recipe (``base: default_pair_choices.yaml``) rather than a copy of it."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..core.names import DTYPE_NAMES
from ..core.names import DEFAULT_RECEIVER, DEFAULT_SHARER
from ..core.validate import Range, above, at_least, check_known_keys, check_ranges, check_types, within
from ..inputs.align import check_layer_map, check_token_alignment
from ..model.config import FuserConfig
from ..translator.config import TranslatorConfig

METHODS = ("c2c", "lora", "translator")  # translator: closed-form fit of context translators
# (training.fit_translators), then optionally self-distillation (steps or epochs)
OBJECTIVES = ("tokens", "choices")


class RecipeError(ValueError):
    """A training recipe that cannot run; raised before any model loads."""


class _YamlLoader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where a number in exponent form without a dot (``3e-4``) is a string; recipes and
    ``--set`` read it as the number it is (YAML 1.2)."""


_YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                                  list("-+0123456789."))


def load_yaml(text: str):
    """A recipe's (or a ``--set`` value's) YAML, with YAML 1.2's exponent floats."""
    return yaml.load(text, Loader=_YamlLoader)


# Every numeric field of a recipe and the values it accepts (after its type is checked; None, where a field may be
# null, passes); the ``fuser`` and ``translator`` mappings are checked by FuserConfig and TranslatorConfig.
RANGES: dict[str, Range] = {
    "distill_weight": within(0, 1, 0.5),
    "distill_temperature": above(0, 0.1),
    "max_examples": at_least(1, 1000),
    "eval_examples": at_least(0, 64),
    "max_length": at_least(2, 512),  # a prompt token and a response token
    "steps": at_least(1, 300),
    "epochs": above(0, 1),
    "batch_size": at_least(1, 4),
    "grad_accum": at_least(1, 1),
    "lr": above(0, 1e-4),
    "gate_lr": above(0, 1e-2),
    "weight_decay": at_least(0, 0.01),
    "warmup": within(0, 1, 0.1),
    "clip": above(0, 1.0),
    "seed": at_least(0, 42),
    "log_every": at_least(1, 10),
    "eval_every": at_least(1, 100),
    "save_every": at_least(1, 100),
    "sharer_cache_gb": at_least(0, 8),
    "max_text_chars": at_least(1, 500),
    "teacher_tokens": at_least(0, 32),  # 0: the data's own responses
    "reconstruction_weight": at_least(0, 0.1),
}
LORA_RANGES: dict[str, Range] = {"r": at_least(1, 16), "lora_alpha": above(0, 32),
                                 "lora_dropout": within(0, 1, 0.05, high_open=True)}


@dataclass
class TrainConfig:
    output: str = "runs/c2c"
    method: str = "c2c"
    objective: str = "tokens"  # or "choices": rank the choices of multiple-choice data (target "choices")
    # objective "choices": the target is (1 - w) * one-hot(answer) + w * softmax(first sharer's cloze scores / T).
    # The sharer's per-character scores of the choices differ by ~0.1 nats, so at T = 1 its target is nearly
    # uniform; at the default 0.1 its top choice averages ~0.65 on the test sets.
    distill_weight: float = 0.0
    distill_temperature: float = 0.1
    receiver: str = DEFAULT_RECEIVER
    sharers: list[str] = field(default_factory=lambda: [DEFAULT_SHARER])
    fuser: dict = field(default_factory=dict)  # FuserConfig fields
    layer_map: str | list = "last_aligned"
    token_alignment: str = "offsets"
    chat_template: bool = True
    dtype: str = "float32"  # the frozen models' dtype; the trained weights and the optimizer stay float32
    device: str = "auto"  # auto: this process's GPU (LOCAL_RANK under torchrun) when there is one, else the CPU
    data: list = field(default_factory=list)  # data.load_training_data specs
    data_dir: str | None = None
    recipe_dir: str | None = None  # set by from_file: relative data files resolve against it after the data dir
    max_examples: int | None = None  # a seeded random subset of the training data
    eval_examples: int = 64  # held out from the data, never trained on
    max_length: int = 512  # prompt + response receiver tokens; longer examples are dropped (and counted)
    steps: int | None = None  # optimizer steps; or give epochs
    epochs: float | None = None
    batch_size: int = 4  # per process, per micro-step
    grad_accum: int = 1
    lr: float = 1e-4
    gate_lr: float = 1e-2  # gate logits need their own rate: at lr 1e-4 they never leave 0 (issue #3)
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of steps
    schedule: str = "linear"  # or "cosine"; decays to 0 after warm-up
    clip: float = 1.0
    seed: int = 42
    log_every: int = 10
    eval_every: int = 100
    save_every: int = 100
    sharer_cache: bool = True  # reuse each example's sharer K/V from disk across epochs
    sharer_cache_gb: float = 8.0
    lora: dict = field(default_factory=lambda: {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05})
    translator: dict = field(default_factory=dict)  # TranslatorConfig fields (method translator)
    max_text_chars: int | None = None  # method translator: each fitting text is cut to this many characters
    eval_data: list = field(default_factory=list)  # method translator: held-out texts (else eval_examples of data)
    # Method translator with steps or epochs: after the closed-form fit (or from ``init_from``), phase 2 trains the
    # maps by self-distillation on ``distill_data`` (conversations whose items carry a context): KL(the receiver
    # reading the context as text || the receiver reading it translated) at every position after the context.
    distill_data: list = field(default_factory=list)
    init_from: str | None = None  # a translator checkpoint to start phase 2 from instead of a closed-form fit
    teacher_tokens: int = 0  # > 0: responses are the teacher's own greedy continuation of this many tokens
    reconstruction_weight: float = 0.0  # adds weight * (1 - R^2) of the maps' K/V against the receiver's own

    def __post_init__(self):
        check_types(self, RecipeError)
        check_ranges(self, RANGES, RecipeError)
        self._check_lora()
        if self.dtype not in DTYPE_NAMES:
            raise RecipeError(f"dtype {self.dtype!r} is not supported; expected one of {sorted(DTYPE_NAMES)}")
        if self.method not in METHODS:
            raise RecipeError(f"method {self.method!r} is unknown; expected one of {METHODS}")
        if self.objective not in OBJECTIVES:
            raise RecipeError(f"objective {self.objective!r} is unknown; expected one of {OBJECTIVES}")
        try:
            check_token_alignment(self.token_alignment, "token_alignment")
            check_layer_map(self.layer_map, "layer_map")
        except ValueError as error:
            raise RecipeError(str(error)) from None
        if self.method == "translator":
            try:
                TranslatorConfig.from_dict(self.translator)
            except (TypeError, ValueError) as error:
                raise RecipeError(f"translator: {error}") from error
            self._check_translator_phases()
        elif (self.steps is None) == (self.epochs is None):
            raise RecipeError(f"give exactly one of steps or epochs (got steps={self.steps}, epochs={self.epochs})")
        if not self.data and not (self.method == "translator" and self.init_from):
            raise RecipeError("no training data: set `data` to a list of files or benchmark specs")
        if self.schedule not in ("linear", "cosine"):
            raise RecipeError(f"schedule {self.schedule!r} is unknown; expected linear or cosine")
        if self.distill_weight and self.objective != "choices":
            raise RecipeError(f"distill_weight={self.distill_weight} distils the sharer's ranking of choices and "
                              f"needs objective: choices (got objective: {self.objective})")
        try:
            FuserConfig.from_dict(self.fuser)
        except (TypeError, ValueError) as error:
            raise RecipeError(f"fuser: {error}") from error

    def _check_lora(self) -> None:
        """The ``lora`` mapping: LoraConfig keys (checked against peft with method lora), its numbers in range."""
        for key in ("r", "lora_alpha", "lora_dropout"):
            value = self.lora.get(key)
            kinds = int if key == "r" else (int, float)
            if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
                raise RecipeError(f"lora {key} must be {'an integer' if key == 'r' else 'a number'}, got {value!r}; "
                                  f"e.g. {key}: {LORA_RANGES[key].example}")
        check_ranges(self.lora, LORA_RANGES, RecipeError, "lora ")
        if self.method == "lora":
            try:
                from peft import LoraConfig
            except ImportError:
                return
            check_known_keys(self.lora, LoraConfig, RecipeError, "lora ",
                             "; they are peft LoraConfig fields, e.g. r, lora_alpha, lora_dropout, target_modules")

    @property
    def distills(self) -> bool:
        """Method translator with phase 2 (self-distillation), not the closed-form fit alone."""
        return self.method == "translator" and (self.steps is not None or self.epochs is not None)

    def _check_translator_phases(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise RecipeError(f"give at most one of steps or epochs (got steps={self.steps}, epochs={self.epochs})")
        if not self.distills:
            phase2 = [k for k in ("distill_data", "init_from", "teacher_tokens", "reconstruction_weight")
                      if getattr(self, k)]
            if phase2:
                raise RecipeError(f"{', '.join(phase2)} configure the translator's phase 2 (self-distillation), which "
                                  "runs only with steps or epochs: add e.g. steps: 300, or remove them")
            return
        if not self.distill_data:
            raise RecipeError("phase 2 of method translator (steps or epochs given) needs distill_data: benchmark "
                              "specs whose items carry a context, e.g. {benchmark: synthetic-1fact, split: train, "
                              "prompt_style: cloze, target: text}")

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        check_known_keys(data, cls, RecipeError, "recipe ")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path, overrides: dict | None = None) -> "TrainConfig":
        """A recipe file, over the recipe it names as ``base`` (if any; relative to its own folder), then
        ``overrides``. Mappings (``fuser``, ``lora``, ``translator``) merge key by key; other values replace."""
        path = Path(path)
        return cls.from_dict({"recipe_dir": str(path.resolve().parent),
                              **merge(read_recipe(path), overrides or {})})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def read_recipe(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The keys of a recipe file with those of its ``base`` chain beneath them."""
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist" + (f" (the base of {chain[-1]})" if chain else ""))
    if path.resolve() in chain:
        raise RecipeError(f"recipe {path} is its own base (through {' -> '.join(str(p) for p in chain)}); "
                          "remove the loop of `base:` keys")
    text = path.read_text()
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        tabs = " (YAML indents with spaces, not tabs)" if "\t" in text else ""
        raise RecipeError(f"recipe {path} is not valid YAML{where}: {getattr(error, 'problem', None) or error}"
                          f"{tabs}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a YAML mapping of keys to values")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise RecipeError(f"recipe {path}: base must be the path of another recipe, got {base!r}")
    return merge(read_recipe(path.parent / base, chain + (path.resolve(),)), data)


def merge(base: dict, overrides: dict) -> dict:
    """``overrides`` over ``base``: nested mappings merge key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged
