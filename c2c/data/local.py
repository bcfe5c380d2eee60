"""Local files as a benchmark source: where each built-in benchmark lives under the data dir, and the data dir.

BENCHMARKS names each built-in benchmark's folder, file pattern, splits (with their aliases and those refused)
and row parser (c2c.data.rows; SQuAD's in c2c.data.squad). The data dir is, first that is given: data_dir=
(--data-dir), else the C2C_DATA_DIR environment variable (read at each call), else none: the Hugging Face hub
(c2c.data.hub). There is no default folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .rows import (
    DataError,
    MCItem,
    Row,
    Source,
    parse_arc,
    parse_arc_evidence,
    parse_ceval,
    parse_mmlu,
    parse_mmlu_redux,
    parse_openbookqa,
    parse_tipsheets,
    read_csv,
    read_jsonl,
    read_tsv,
)
from .squad import parse_squad, read_squad

DATA_DIR_ENV = "C2C_DATA_DIR"


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a built-in benchmark lives under the data dir and how its rows are read."""

    folder: str
    pattern: str  # glob under folder; "{split}" is replaced by the split
    splits: tuple[str, ...]
    read: Callable[..., Iterator[tuple[int | str, Any]]]  # (path), or (path, split) with split_in_file
    parse: Callable[[Any, Row], MCItem | str]
    subject: Callable[[Path, str], str | None] = lambda path, split: None
    aliases: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # split -> why it is not usable
    split_in_file: bool = False  # every split is in the same file(s): read(path, split) picks the split's rows

    def reader(self, split: str) -> Callable[[Path], Iterator[tuple[int | str, Any]]]:
        """The file reader for ``split``."""
        return (lambda path: self.read(path, split)) if self.split_in_file else self.read


def _stem_minus_split(path: Path, split: str) -> str:
    return path.stem.removesuffix(f"_{split}")


_TDT = ("train", "dev", "test")
_DEV_ALIASES = {"validation": "dev", "val": "dev"}

BENCHMARKS: dict[str, BenchmarkSpec] = {
    "arc-easy": BenchmarkSpec(
        "arc/ARC-Easy", "{split}.jsonl", _TDT, read_jsonl, parse_arc, aliases=_DEV_ALIASES
    ),
    "arc-challenge": BenchmarkSpec(
        "arc/ARC-Challenge", "{split}.jsonl", _TDT, read_jsonl, parse_arc, aliases=_DEV_ALIASES
    ),
    "arc-easy-evidence": BenchmarkSpec(
        "arc/ARC-Easy", "{split}.jsonl", _TDT, read_jsonl, parse_arc_evidence, aliases=_DEV_ALIASES
    ),
    "arc-challenge-evidence": BenchmarkSpec(
        "arc/ARC-Challenge", "{split}.jsonl", ("train", "dev"), read_jsonl, parse_arc_evidence,
        aliases=_DEV_ALIASES, unavailable={"test": "the ARC-Challenge test file here has no evidence passages"}
    ),
    "tipsheets": BenchmarkSpec(
        "kvcomm", "tipsheets.jsonl", ("test",), read_jsonl, parse_tipsheets
    ),
    "squad": BenchmarkSpec(  # free text; SQuAD v1.1 dev split by article (c2c.data.squad)
        "squad", "dev-v1.1.json", _TDT, read_squad, parse_squad, aliases={"val": "dev"}, split_in_file=True
    ),
    "openbookqa": BenchmarkSpec(
        "openbookqa", "{split}.tsv", _TDT, read_tsv, parse_openbookqa, aliases=_DEV_ALIASES
    ),
    "mmlu": BenchmarkSpec(
        "mmlu", "{split}/*_{split}.csv", ("dev", "test"), read_csv, parse_mmlu, _stem_minus_split
    ),
    "mmlu-redux": BenchmarkSpec(
        "mmlu_redux",
        "mmlu_*.csv",
        ("test",),
        read_csv,
        parse_mmlu_redux,
        lambda path, split: path.stem.removeprefix("mmlu_"),
    ),
    "ceval": BenchmarkSpec(
        "ceval",
        "{split}/*_{split}.csv",
        ("dev", "val"),
        read_csv,
        parse_ceval,
        _stem_minus_split,
        aliases={"validation": "val"},
        unavailable={"test": "C-Eval's public test split has no answers; use split='val' ('dev' for few-shot)"},
    ),
    "commonsenseqa": BenchmarkSpec(
        "commonsenseqa",
        "{split}.jsonl",
        ("train", "dev"),
        read_jsonl,
        parse_arc,
        aliases=_DEV_ALIASES,
        unavailable={"test": "CommonsenseQA's public test split has no answers; use split='dev'"},
    ),
}


def canonical_split(name: str, split: str) -> str:
    """A built-in benchmark's own name for the split; refuses splits without answers."""
    spec = BENCHMARKS.get(name)
    if spec is None:
        return split
    split = spec.aliases.get(split, split)
    if split in spec.unavailable:
        raise DataError(f"{name} split {split!r} is not usable: {spec.unavailable[split]}")
    return split


def benchmark_files(
    name: str, split: str, data_dir: Path, origin: str = "data_dir= (--data-dir)"
) -> tuple[str, list[Path], BenchmarkSpec]:
    spec = BENCHMARKS[name]
    split = canonical_split(name, split)
    folder = data_dir / spec.folder
    if not folder.is_dir():
        raise DataError(
            f"{name}: data folder {folder} not found (data dir from {origin}); expected "
            f"{spec.folder}/{spec.pattern} under the data dir. Pass data_dir=... (--data-dir) or set "
            f"{DATA_DIR_ENV} to the folder that holds it, or give neither to load it from the Hugging Face hub "
            "(pip install 'c2c[hub]')."
        )
    present = [s for s in spec.splits if any(folder.glob(spec.pattern.format(split=s)))]
    if split not in spec.splits:
        raise DataError(
            f"{name} has no split {split!r}; splits: {', '.join(spec.splits)} "
            f"(present in {folder}: {', '.join(present) or 'none'})"
        )
    files = sorted(folder.glob(spec.pattern.format(split=split)))
    if not files:
        raise DataError(
            f"{name} split {split!r}: no files matching {folder / spec.pattern.format(split=split)}; "
            f"splits present there: {', '.join(present) or 'none'}"
        )
    return split, files, spec


def file_source(path: Path, read: Callable[[Path], Iterator[tuple[int | str, Any]]],
                subject: str | None = None) -> Source:
    return Source(str(path), ((f"{path}:{line}", raw) for line, raw in read(path)), subject, path.stem)


def data_dir_from_env() -> str | None:
    """The C2C_DATA_DIR variable as it is now (None when unset or empty): the data dir when none is passed."""
    return os.environ.get(DATA_DIR_ENV) or None


def data_root(data_dir: str | Path | None) -> tuple[str | Path | None, str]:
    """(the data dir to use, where it came from): data_dir, else C2C_DATA_DIR, else (None, "") for the hub."""
    if data_dir is not None:
        return data_dir, "data_dir= (--data-dir)"
    env = data_dir_from_env()
    return (env, f"{DATA_DIR_ENV}={env}") if env is not None else (None, "")
