"""Benchmark loading over the two sources: local files (c2c.data.local) and the Hugging Face hub (c2c.data.hub).

Loads the multiple-choice benchmarks (ARC, OpenBookQA, MMLU, MMLU-Redux, C-Eval, CommonsenseQA, or any
generic JSONL; with a context: ARC evidence, Tipsheets; or the synthetic context tasks), and SQuAD (free-text
answers, with a context), into one `Benchmark` of `MCItem`s, with a report of what was read, kept and dropped,
and a seeded subset when asked for.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .hub import HUB, hub_id, hub_sources
from .local import BENCHMARKS, DATA_DIR_ENV, benchmark_files, canonical_split, data_root, file_source
from .rows import SKIP_HINT, DataError, MCItem, Row, RowError, Source, parse_generic, read_jsonl
from .squad import parse_squad, squad_questions
from .synthetic import SYNTHETIC_SIZES, synthetic_benchmark_facts, synthetic_items


@dataclass
class Benchmark:
    name: str
    split: str
    items: list[MCItem]
    report: dict


def _collect(
    sources: list[Source], parse: Callable[[Any, Row], MCItem | str], skip_bad: bool
) -> tuple[list[MCItem], dict]:
    notes: Counter = Counter()
    dropped: Counter = Counter()
    bad_rows: list[str] = []
    items: list[MCItem] = []
    seen: set[str] = set()
    rows_read = 0
    for source in sources:
        for index, (where, raw) in enumerate(source.rows):
            rows_read += 1
            row = Row(where, index, source.subject, source.stem, notes)
            try:
                result = parse(raw, row)
                if isinstance(result, MCItem) and result.id in seen:
                    raise RowError(f"duplicate id {result.id!r}", "unique ids")
            except RowError as e:
                if not skip_bad:
                    raise DataError(f"{row.where}: {e}. {SKIP_HINT}") from None
                bad_rows.append(f"{row.where}: {e}")
                dropped["malformed"] += 1
                continue
            if isinstance(result, str):
                dropped[result] += 1
            else:
                seen.add(result.id)
                items.append(result)
    report = {
        "files": [source.name for source in sources],
        "rows_read": rows_read,
        "kept": len(items),
        "dropped": dict(dropped),
        "bad_rows": bad_rows,
        "notes": dict(sorted(notes.items())),
    }
    return items, report


def _hub_fallback(name: str, split: str) -> tuple[str, list[Source], Callable[[Any, Row], MCItem | str]]:
    """Sources of a built-in benchmark when no data dir is given: its default hub dataset, or one error that
    names the three ways to give the data and what was tried."""
    split = canonical_split(name, split)  # a split without answers is refused as such, before any loading
    try:
        return hub_sources(name, split)
    except DataError as e:
        dataset = HUB[name].path if name in HUB else "no default dataset"
        raise DataError(
            f"{name}: no data. Tried, in order: data_dir= / --data-dir (not given); the {DATA_DIR_ENV} "
            f"environment variable (not set); the Hugging Face hub ({dataset}): {str(e).rstrip('.')}. "
            f"Give the data one of three ways: --data-dir DIR (data_dir=DIR), a folder that holds "
            f"{BENCHMARKS[name].folder}/{BENCHMARKS[name].pattern}; or set {DATA_DIR_ENV}=DIR; "
            "or pip install 'c2c[hub]' and run with network access "
            "(or with the dataset already in the Hugging Face cache)."
        ) from e


def seeded_sample(population: int, size: int, seed: int) -> list[int]:
    """`size` distinct indices into range(population), drawn one at a time uniformly from those not yet drawn.

    Unlike `random.sample`, whose algorithm depends on the sample size, a larger sample extends a smaller one
    with the same seed, so growing an evaluation from 300 to 500 items keeps (and reuses) the first 300.
    For population > 1045 the first 300 are those `random.Random(seed).sample` picked (its set-based path).
    """
    if size >= population:
        return list(range(population))
    rng, drawn = random.Random(seed), {}
    while len(drawn) < size:
        drawn.setdefault(rng.randrange(population), None)  # a dict keeps the draw order
    return list(drawn)


def load_benchmark(
    name: str,
    split: str = "test",
    data_dir: str | Path | None = None,
    skip_bad: bool = False,
    limit: int | None = None,
    seed: int = 0,
) -> Benchmark:
    """Load a built-in benchmark (see BENCHMARKS), a generic multiple-choice .jsonl file, or every question of an
    official SQuAD .json file (free text; no split is cut from a file given by its path).

    data_dir is a local folder in the shared data layout, or a Hugging Face dataset (see c2c.data.hub): "hf" for
    the benchmark's default one, "hf:OWNER/NAME[:CONFIG]", or "OWNER/NAME" when no such local path exists.
    A hub dataset that is no benchmark's default is read with the generic schema (question, choices, answer),
    and `name` only labels it. Without data_dir, the C2C_DATA_DIR environment variable (read now) takes its
    place; without either, a built-in benchmark comes from its default hub dataset, and when that fails too
    one DataError names all three ways. There is no default folder.
    report["kept"] counts the usable items before `limit`; `limit` then picks a
    deterministic random subset (see `seeded_sample`), kept in file order.
    """
    is_file = name.endswith((".jsonl", ".json")) or os.sep in name
    facts = None if is_file else synthetic_benchmark_facts(name)
    root, origin = (None, "") if is_file or facts else data_root(data_dir)
    hub = None if is_file or facts else hub_id(root)
    if facts:  # generated in the project: no data dir needed
        if split not in SYNTHETIC_SIZES:
            raise DataError(f"{name} has no split {split!r}; splits: {', '.join(SYNTHETIC_SIZES)}")
        rows = synthetic_items(split, SYNTHETIC_SIZES[split], facts)
        rows = [(f"{name}:{split}:{index}", json.dumps(row)) for index, row in enumerate(rows)]
        sources, parse = [Source(f"{name}:{split} (generated)", rows, None, name)], parse_generic
    elif hub is not None:
        split, sources, parse = hub_sources(name, split, *hub)
    elif name in BENCHMARKS and root is None:
        split, sources, parse = _hub_fallback(name, split)
    elif name in BENCHMARKS:
        split, files, spec = benchmark_files(name, split, Path(root), origin)
        sources, parse = [file_source(f, spec.reader(split), spec.subject(f, split)) for f in files], spec.parse
    elif is_file:
        path = Path(name)
        if not path.is_file():
            raise DataError(f"benchmark file {path} not found; pass an existing .jsonl file (multiple choice) or "
                            "an official SQuAD .json file")
        squad = path.suffix == ".json"
        sources = [file_source(path, squad_questions if squad else read_jsonl)]
        parse = parse_squad if squad else parse_generic
    else:
        raise DataError(
            f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}, "
            "or a path to a .jsonl file with question/choices/answer per line or to an official SQuAD .json file "
            "(or any name with a hub dataset in data_dir='hf:OWNER/NAME')"
        )
    items, report = _collect(sources, parse, skip_bad)
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit={limit}; expected a positive number of items (or None for all)")
        items = [items[i] for i in sorted(seeded_sample(len(items), limit, seed))]
    report["selected"] = len(items)
    label = Path(name).stem if is_file else name  # a generic file is named by its stem
    return Benchmark(label, split, items, report)
