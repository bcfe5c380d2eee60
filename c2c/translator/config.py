"""A context translator's settings (``translator`` in c2c_config.json and in recipes): validated, round-trip JSON,
and no torch, so configs and recipes load without it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..core.names import DTYPE_NAMES
from ..core.validate import above, at_least, check_known_keys, check_ranges, check_types


TRANSLATOR_RANGES = {"window": at_least(0, 1), "ridge": above(0, "[0.01, 0.1, 1.0]"), "max_context_tokens": at_least(1, 4096),
                     "residual_rank": at_least(0, 0)}  # residual_rank 0: linear maps only


@dataclass
class TranslatorConfig:
    window: int = 1  # sharer layers read on each side of the partner layer (1: three layers)
    ridge: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0])  # candidate strengths (x tokens)
    storage_dtype: str = "float16"  # how the maps are saved; they always compute in float32
    max_context_tokens: int | None = None  # longest context in sharer tokens (None: as long as both models take)
    residual_rank: int = 0  # > 0: a low-rank nonlinear residual on each map, trained in phase 2 (zero at the start)

    def __post_init__(self):
        check_types(self, ValueError, "translator ")
        if not self.ridge or any(isinstance(r, bool) or not isinstance(r, (int, float)) for r in self.ridge):
            raise ValueError(f"translator ridge must be a non-empty list of positive strengths, got {self.ridge!r}; "
                             "e.g. ridge: [0.01, 0.1, 1.0]")
        check_ranges(self, TRANSLATOR_RANGES, ValueError, "translator ")
        if self.storage_dtype not in DTYPE_NAMES:
            raise ValueError(f"translator storage_dtype {self.storage_dtype!r} is unknown; expected one of "
                             f"{sorted(DTYPE_NAMES)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TranslatorConfig":
        check_known_keys(data, cls, ValueError, "translator ")
        return cls(**data)
