"""Benchmarks, prompt formats and training data.

Loads the multiple-choice benchmarks (ARC, OpenBookQA, MMLU, MMLU-Redux, C-Eval,
CommonsenseQA, or any generic JSONL; from local files, or from the Hugging Face hub through
c2c.hub) into one `MCItem` form, renders the prompts used by
both training and evaluation, and loads instruction/chat data as `Conversation`s.
Pure Python (no torch) so that it stays cheap to import.
"""

from __future__ import annotations

import ast
import csv
import difflib
import io
import json
import logging
import os
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .synthetic import SYNTHETIC_SIZES, synthetic_benchmark_facts, synthetic_items

log = logging.getLogger(__name__)

# Where the built-in benchmarks come from, first that is given: data_dir= (--data-dir), else this environment
# variable (read at each call), else the Hugging Face hub (c2c.hub). There is no default folder.
DATA_DIR_ENV = "C2C_DATA_DIR"
_SKIP_HINT = "Fix the row, or pass --skip-bad (skip_bad=True) to skip malformed rows."
_LETTERS = string.ascii_uppercase


class DataError(ValueError):
    """A dataset could not be found or read; the message says where, what and how to fix it."""


class _RowError(Exception):
    """One malformed row; the loader adds file:line and raises or skips it."""

    def __init__(self, found: str, expected: str):
        super().__init__(f"{found}; expected {expected}")


@dataclass
class MCItem:
    id: str
    question: str
    choices: list[str]
    answer: int  # 0-based index of the gold choice
    subject: str | None = None
    context: str | None = None  # a text only the sharer reads (context-handoff benchmarks)

    @property
    def letters(self) -> list[str]:
        return list(_LETTERS[: len(self.choices)])


@dataclass
class Benchmark:
    name: str
    split: str
    items: list[MCItem]
    report: dict


# --------------------------------------------------------------------------- file readers


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:  # e.g. MMLU-Redux's mmlu_moral_scenarios.csv
        return raw.decode("latin-1")


def _read_jsonl(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line; each line is parsed by the row parser."""
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and other line breaks
    for line, text in enumerate(_read_text(path).split("\n"), 1):
        if text.strip():
            yield line, text


def _read_table(path: Path, delimiter: str | None = None) -> Iterator[tuple[int, dict]]:
    """(first line of the record, {column: cell}) per non-empty row.

    The delimiter is sniffed from the header when not given (MMLU-Redux mixes `;` and `,`).
    Cells beyond the header are kept under the key None, as csv.DictReader does.
    """
    text = _read_text(path)
    header_line = text.split("\n", 1)[0]
    if delimiter is None:
        delimiter = ";" if header_line.count(";") > header_line.count(",") else ","
    # Tab-separated files (OpenBookQA) use no quoting: a cell may start with a quote.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        header = [h.strip() for h in next(reader)]
        line = reader.line_num + 1
        for cells in reader:
            if any(c.strip() for c in cells):
                row: dict = dict(zip(header, cells))
                if len(cells) > len(header):
                    row[None] = cells[len(header) :]
                yield line, row
            line = reader.line_num + 1
    except StopIteration:
        raise DataError(f"{path}: the file is empty; expected a header row") from None
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: unreadable CSV ({e}); fix the quoting") from None


def _read_csv(path: Path) -> Iterator[tuple[int, dict]]:
    return _read_table(path)


def _read_tsv(path: Path) -> Iterator[tuple[int, dict]]:
    return _read_table(path, "\t")


# --------------------------------------------------------------------------- row validation


@dataclass
class _Source:
    """One file, or one config and split of a hub dataset (c2c.hub): the rows _collect parses."""

    name: str  # listed in report["files"]
    rows: Iterable[tuple[str, Any]]  # (where, raw) per row; where ("file:line") starts its error messages
    subject: str | None = None
    stem: str = ""  # default ids are "{subject or stem}/{index}"


def _file_source(path: Path, read: Callable[[Path], Iterator[tuple[int, Any]]], subject: str | None = None) -> _Source:
    return _Source(str(path), ((f"{path}:{line}", raw) for line, raw in read(path)), subject, path.stem)


@dataclass
class _Row:
    """Where a row came from, for ids and error messages."""

    where: str
    index: int  # 0-based data row within its source
    subject: str | None
    stem: str
    notes: Counter

    def default_id(self) -> str:
        return f"{self.subject or self.stem}/{self.index}"


def _json_obj(text: str) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise _RowError(f"invalid JSON ({e.msg} at column {e.colno})", "one JSON object per line") from None
    if not isinstance(obj, dict):
        raise _RowError(f"a JSON {type(obj).__name__}", "a JSON object")
    return obj


def _get(obj: dict, key: str) -> Any:
    if obj.get(key) is None:
        raise _RowError(f"no field {key!r} (fields: {sorted(k for k in obj if k)})", f"a {key!r} field")
    return obj[key]


def _fields(row: dict, *names: str) -> list[str]:
    """The named cells of a table row, rejecting rows that spill past the header."""
    extra = [c for c in row.get(None, []) if c.strip()]
    if extra:
        raise _RowError(
            f"{len(extra)} cell(s) beyond the header (first: {extra[0][:40]!r})",
            "one cell per header column (check the separator and quoting)",
        )
    return [_get(row, name) for name in names]


def _choices(value: Any) -> list[str]:
    if not isinstance(value, list) or not 2 <= len(value) <= len(_LETTERS):
        raise _RowError(f"choices {str(value)[:80]!r}", f"a list of 2-{len(_LETTERS)} choices")
    if any(isinstance(c, bool) or not isinstance(c, str | int | float) for c in value):
        raise _RowError(f"choices {str(value)[:80]!r}", "text (or number) choices")
    choices = [str(c).strip() for c in value]
    if not all(choices):
        raise _RowError(f"an empty choice in {choices}", "non-empty choice texts")
    return choices


def _answer_index(value: Any, n: int) -> int:
    """0-based index from an int, a digit string ("2") or a letter ("C" or "c")."""
    index = None
    if isinstance(value, int) and not isinstance(value, bool):
        index = value
    elif isinstance(value, str):
        v = value.strip()
        if re.fullmatch(r"\d+", v):
            index = int(v)
        elif re.fullmatch(r"[A-Za-z]", v):
            index = ord(v.upper()) - ord("A")
    if index is None or not 0 <= index < n:
        raise _RowError(f"answer {value!r}", f"a 0-based index 0-{n - 1} or a letter A-{_LETTERS[n - 1]}")
    return index


def _labelled(labels: Any, texts: Any, key: Any) -> tuple[list[str], int]:
    """Choices and gold index from parallel label/text lists and an answer key.

    Shared by both ARC schemas, CommonsenseQA and OpenBookQA. Labels may be A-E or 1-5;
    the key must match exactly one label.
    """
    if not isinstance(labels, list) or not isinstance(texts, list) or len(labels) != len(texts):
        raise _RowError(f"labels {labels!r} for {texts!r}", "one label per choice")
    choices = _choices(texts)
    wanted = str(key).strip().upper()
    hits = [i for i, label in enumerate(labels) if str(label).strip().upper() == wanted]
    if len(hits) != 1:
        raise _RowError(f"answer key {key!r} matching {len(hits)} of the labels {labels}", "one match")
    return choices, hits[0]


def _item(id_: Any, question: Any, choices: list[str], answer: int, row: _Row, subject: Any = None,
          context: Any = None) -> MCItem:
    if not isinstance(question, str) or not question.strip():
        raise _RowError(f"question {question!r}", "a non-empty question text")
    if context is not None and (not isinstance(context, str) or not context.strip()):
        raise _RowError(f"context {str(context)[:80]!r}", "a non-empty text (or no context field)")
    return MCItem(
        id=str(id_) if id_ not in (None, "") else row.default_id(),
        question=question.strip(),
        choices=choices,
        answer=answer,
        subject=str(subject) if subject else row.subject,
        context=context.strip() if context else None,
    )


# --------------------------------------------------------------------------- row parsers
# Each returns an MCItem, or a string: the reason the row is (deliberately) dropped.


def _parse_arc(text: str, row: _Row) -> MCItem:
    """ARC / CommonsenseQA, in the original schema or the Hugging Face `ai2_arc` schema."""
    obj = _json_obj(text)
    question = _get(obj, "question")
    if isinstance(question, dict):  # original: question.stem, question.choices[{label, text}]
        stem, raw = _get(question, "stem"), _get(question, "choices")
        if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
            raise _RowError(f"question.choices {str(raw)[:80]!r}", "a list of {label, text} objects")
        labels, texts = [c.get("label") for c in raw], [c.get("text") for c in raw]
    else:  # Hugging Face: question, choices{text[], label[]}
        stem, raw = question, _get(obj, "choices")
        if not isinstance(raw, dict):
            raise _RowError(f"choices {str(raw)[:80]!r}", "an object {text: [...], label: [...]}")
        labels, texts = raw.get("label"), raw.get("text")
    choices, answer = _labelled(labels, texts, _get(obj, "answerKey"))
    return _item(_get(obj, "id"), stem, choices, answer, row)


def _parse_arc_evidence(text: str, row: _Row) -> MCItem | str:
    """ARC with its per-choice retrieved evidence (``para``, original schema) as the sharer's context: every
    choice's evidence in choice order, so the context does not point at the answer by its shape."""
    item = _parse_arc(text, row)
    choices = _json_obj(text)["question"]
    paras = [c.get("para", "").strip() for c in choices["choices"]] if isinstance(choices, dict) else []
    if not any(paras):
        return "no evidence"
    item.context = " ".join(p if p.endswith(".") else p + "." for p in paras if p)
    return item


_OBQA_MARK = re.compile(r"(?:^|\s+)\(([A-Z])\)\s+")


def _parse_openbookqa(cells: dict, row: _Row) -> MCItem:
    """Choices come as one string "(A) .. (B) .. (C) .. (D) ..", split at the markers."""
    id_, stem, packed, key = _fields(cells, "ID", "Question Stem", "Choices", "Answer Key")
    parts = _OBQA_MARK.split(packed)
    if parts[0].strip() or len(parts) < 5:
        raise _RowError(f"choices {packed[:80]!r}", 'a string "(A) ... (B) ..."')
    choices, answer = _labelled(parts[1::2], parts[2::2], key)
    return _item(id_, stem, choices, answer, row)


def _parse_mmlu(cells: dict, row: _Row) -> MCItem:
    columns = ("question", "choice0", "choice1", "choice2", "choice3", "answer")
    question, *choices, answer = _fields(cells, *columns)
    choices = _choices(choices)
    return _item(None, question, choices, _answer_index(answer, len(choices)), row)


def _parse_ceval(cells: dict, row: _Row) -> MCItem:
    id_, question, *choices, answer = _fields(cells, "id", "question", "A", "B", "C", "D", "answer")
    choices = _choices(choices)
    return _item(f"{row.subject}/{id_.strip()}", question, choices, _answer_index(answer, len(choices)), row)


_REDUX_TYPES = (
    "ok",
    "wrong_groundtruth",
    "no_correct_answer",
    "multiple_correct_answers",
    "bad_question_clarity",
    "bad_options_clarity",
    "expert",
)
_REDUX_DROPPED = {"no_correct_answer", "expert"}  # as in the MMLU-Redux paper


def _redux_error_type(raw: str) -> str:
    """Canonical error type from the annotators' spellings ("Wrong Groundtruth", "ok ", typos)."""
    key = re.sub(r"[\s_-]+", "_", raw.strip().lower())
    if not key:
        return "ok"  # nothing flagged
    match = difflib.get_close_matches(key, _REDUX_TYPES, n=1, cutoff=0.8)
    if not match:
        raise _RowError(f"error_type {raw!r}", f"one of {', '.join(_REDUX_TYPES)}")
    return match[0]


def _parse_mmlu_redux(cells: dict, row: _Row) -> MCItem | str:
    question, raw_choices, answer, raw_type = _fields(cells, "question", "choices", "answer", "error_type")
    error_type = _redux_error_type(raw_type)
    row.notes[f"error_type={error_type}"] += 1
    if error_type in _REDUX_DROPPED:
        return error_type
    if error_type == "wrong_groundtruth":
        answer = (cells.get("correct_answer") or "").strip()  # a letter or a 0-based index
        if not answer:
            return "wrong_groundtruth_without_fix"
    try:
        choices = _choices(ast.literal_eval(raw_choices.strip()))
    except (ValueError, SyntaxError):
        raise _RowError(f"choices {raw_choices[:80]!r}", "a Python list literal like ['a', 'b']") from None
    item = _item(None, question, choices, _answer_index(answer, len(choices)), row)
    if error_type == "wrong_groundtruth":
        row.notes["answer_fixed"] += 1
    return item


def _parse_generic(text: str, row: _Row) -> MCItem:
    obj = _json_obj(text)
    choices = _choices(_get(obj, "choices"))
    answer = _answer_index(_get(obj, "answer"), len(choices))
    return _item(obj.get("id"), _get(obj, "question"), choices, answer, row, obj.get("subject"), obj.get("context"))


def _parse_tipsheets(text: str, row: _Row) -> MCItem:
    """KVComm's Tipsheets: ``prompt_A`` is the context only the sharer reads, ``prompt_B`` the question."""
    obj = _json_obj(text)
    choices = _choices(_get(obj, "options"))
    label = _get(obj, "label")
    if label not in choices:
        raise _RowError(f"label {label!r} not among the options {choices}", "one of the options")
    return _item(obj.get("id"), _get(obj, "prompt_B"), choices, choices.index(label), row, None, _get(obj, "prompt_A"))


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where a built-in benchmark lives under the data dir and how its rows are read."""

    folder: str
    pattern: str  # glob under folder; "{split}" is replaced by the split
    splits: tuple[str, ...]
    read: Callable[[Path], Iterator[tuple[int, Any]]]
    parse: Callable[[Any, _Row], MCItem | str]
    subject: Callable[[Path, str], str | None] = lambda path, split: None
    aliases: dict[str, str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # split -> why it is not usable


def _stem_minus_split(path: Path, split: str) -> str:
    return path.stem.removesuffix(f"_{split}")


_TDT = ("train", "dev", "test")
_DEV_ALIASES = {"validation": "dev", "val": "dev"}

BENCHMARKS: dict[str, BenchmarkSpec] = {
    "arc-easy": BenchmarkSpec(
        "arc/ARC-Easy", "{split}.jsonl", _TDT, _read_jsonl, _parse_arc, aliases=_DEV_ALIASES
    ),
    "arc-challenge": BenchmarkSpec(
        "arc/ARC-Challenge", "{split}.jsonl", _TDT, _read_jsonl, _parse_arc, aliases=_DEV_ALIASES
    ),
    "arc-easy-evidence": BenchmarkSpec(
        "arc/ARC-Easy", "{split}.jsonl", _TDT, _read_jsonl, _parse_arc_evidence, aliases=_DEV_ALIASES
    ),
    "arc-challenge-evidence": BenchmarkSpec(
        "arc/ARC-Challenge", "{split}.jsonl", ("train", "dev"), _read_jsonl, _parse_arc_evidence,
        aliases=_DEV_ALIASES, unavailable={"test": "the ARC-Challenge test file here has no evidence passages"}
    ),
    "tipsheets": BenchmarkSpec(
        "kvcomm", "tipsheets.jsonl", ("test",), _read_jsonl, _parse_tipsheets
    ),
    "openbookqa": BenchmarkSpec(
        "openbookqa", "{split}.tsv", _TDT, _read_tsv, _parse_openbookqa, aliases=_DEV_ALIASES
    ),
    "mmlu": BenchmarkSpec(
        "mmlu", "{split}/*_{split}.csv", ("dev", "test"), _read_csv, _parse_mmlu, _stem_minus_split
    ),
    "mmlu-redux": BenchmarkSpec(
        "mmlu_redux",
        "mmlu_*.csv",
        ("test",),
        _read_csv,
        _parse_mmlu_redux,
        lambda path, split: path.stem.removeprefix("mmlu_"),
    ),
    "ceval": BenchmarkSpec(
        "ceval",
        "{split}/*_{split}.csv",
        ("dev", "val"),
        _read_csv,
        _parse_ceval,
        _stem_minus_split,
        aliases={"validation": "val"},
        unavailable={"test": "C-Eval's public test split has no answers; use split='val' ('dev' for few-shot)"},
    ),
    "commonsenseqa": BenchmarkSpec(
        "commonsenseqa",
        "{split}.jsonl",
        ("train", "dev"),
        _read_jsonl,
        _parse_arc,
        aliases=_DEV_ALIASES,
        unavailable={"test": "CommonsenseQA's public test split has no answers; use split='dev'"},
    ),
}


def _canonical_split(name: str, split: str) -> str:
    """A built-in benchmark's own name for the split; refuses splits without answers."""
    spec = BENCHMARKS.get(name)
    if spec is None:
        return split
    split = spec.aliases.get(split, split)
    if split in spec.unavailable:
        raise DataError(f"{name} split {split!r} is not usable: {spec.unavailable[split]}")
    return split


def _benchmark_files(
    name: str, split: str, data_dir: Path, origin: str = "data_dir= (--data-dir)"
) -> tuple[str, list[Path], BenchmarkSpec]:
    spec = BENCHMARKS[name]
    split = _canonical_split(name, split)
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


# --------------------------------------------------------------------------- loading


def _collect(
    sources: list[_Source], parse: Callable[[Any, _Row], MCItem | str], skip_bad: bool
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
            row = _Row(where, index, source.subject, source.stem, notes)
            try:
                result = parse(raw, row)
                if isinstance(result, MCItem) and result.id in seen:
                    raise _RowError(f"duplicate id {result.id!r}", "unique ids")
            except _RowError as e:
                if not skip_bad:
                    raise DataError(f"{row.where}: {e}. {_SKIP_HINT}") from None
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


_HUB_ID = re.compile(r"\w[\w.-]*/\w[\w.-]*")  # OWNER/NAME, as on the Hugging Face hub


def _hub_id(data_dir: str | Path | None) -> tuple[str | None, str | None] | None:
    """(dataset id, config) when data_dir names a hub dataset, the id None for each benchmark's default;
    None for a local folder. An existing local folder always wins."""
    if data_dir is None or Path(data_dir).is_dir():
        return None
    text = str(data_dir)
    if text in ("hf", "hf:"):
        return None, None
    if text.startswith("hf:"):
        dataset, _, config = text[3:].partition(":")
        return dataset or None, config or None
    if _HUB_ID.fullmatch(text) and not Path(text).exists():
        return text, None
    return None


def data_dir_from_env() -> str | None:
    """The C2C_DATA_DIR variable as it is now (None when unset or empty): the data dir when none is passed."""
    return os.environ.get(DATA_DIR_ENV) or None


def _data_root(data_dir: str | Path | None) -> tuple[str | Path | None, str]:
    """(the data dir to use, where it came from): data_dir, else C2C_DATA_DIR, else (None, "") for the hub."""
    if data_dir is not None:
        return data_dir, "data_dir= (--data-dir)"
    env = data_dir_from_env()
    return (env, f"{DATA_DIR_ENV}={env}") if env is not None else (None, "")


def _hub_fallback(name: str, split: str) -> tuple[str, list[_Source], Callable[[Any, _Row], MCItem | str]]:
    """Sources of a built-in benchmark when no data dir is given: its default hub dataset, or one error that
    names the three ways to give the data and what was tried."""
    split = _canonical_split(name, split)  # a split without answers is refused as such, before any loading
    from .hub import HUB, hub_sources  # imports `datasets`, an optional dependency, only when loading

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
    """Load a built-in benchmark (see BENCHMARKS) or a generic multiple-choice .jsonl file.

    data_dir is a local folder in the shared data layout, or a Hugging Face dataset (see c2c.hub): "hf" for
    the benchmark's default one, "hf:OWNER/NAME[:CONFIG]", or "OWNER/NAME" when no such local path exists.
    A hub dataset that is no benchmark's default is read with the generic schema (question, choices, answer),
    and `name` only labels it. Without data_dir, the C2C_DATA_DIR environment variable (read now) takes its
    place; without either, a built-in benchmark comes from its default hub dataset, and when that fails too
    one DataError names all three ways. There is no default folder.
    report["kept"] counts the usable items before `limit`; `limit` then picks a
    deterministic random subset (see `seeded_sample`), kept in file order.
    """
    is_file = name.endswith(".jsonl") or os.sep in name
    facts = None if is_file else synthetic_benchmark_facts(name)
    root, origin = (None, "") if is_file or facts else _data_root(data_dir)
    hub = None if is_file or facts else _hub_id(root)
    if facts:  # generated in the project: no data dir needed
        if split not in SYNTHETIC_SIZES:
            raise DataError(f"{name} has no split {split!r}; splits: {', '.join(SYNTHETIC_SIZES)}")
        rows = synthetic_items(split, SYNTHETIC_SIZES[split], facts)
        rows = [(f"{name}:{split}:{index}", json.dumps(row)) for index, row in enumerate(rows)]
        sources, parse = [_Source(f"{name}:{split} (generated)", rows, None, name)], _parse_generic
    elif hub is not None:
        from .hub import hub_sources  # imports `datasets`, an optional dependency, only here

        split, sources, parse = hub_sources(name, split, *hub)
    elif name in BENCHMARKS and root is None:
        split, sources, parse = _hub_fallback(name, split)
    elif name in BENCHMARKS:
        split, files, spec = _benchmark_files(name, split, Path(root), origin)
        sources, parse = [_file_source(f, spec.read, spec.subject(f, split)) for f in files], spec.parse
    elif is_file:
        path = Path(name)
        if not path.is_file():
            raise DataError(f"benchmark file {path} not found; pass an existing .jsonl file")
        sources, parse = [_file_source(path, _read_jsonl)], _parse_generic
    else:
        raise DataError(
            f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}, "
            "or a path to a .jsonl file with question/choices/answer per line "
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


# --------------------------------------------------------------------------- prompts

_GENERATE_TEMPLATE = """Accurately answer the following question:

{question}

Choices:
{choices}

Instructions:
- Carefully read the question and all options.
- Select the single most correct answer.
- Respond ONLY in the following format: "The correct answer is {letters}".
- Do not include any explanations, additional text, or punctuation besides the answer.

The correct answer is"""


def _options(item: MCItem) -> str:
    return "".join(f"{letter}. {choice}\n" for letter, choice in zip(item.letters, item.choices))


def mc_prompt(item: MCItem, style: str) -> str:
    """User text for an item: "cloze", "cloze-options" or "generate" (the C2C paper's zero-shot prompt)."""
    if style == "cloze":
        return f"Question: {item.question}\nAnswer:"
    if style == "cloze-options":
        return f"Question: {item.question}\n{_options(item)}Answer:"
    if style == "generate":
        return _GENERATE_TEMPLATE.format(
            question=item.question, choices=_options(item).rstrip("\n"), letters="/".join(item.letters)
        )
    raise ValueError(f"unknown prompt style {style!r}; expected cloze, cloze-options or generate")


def cloze_continuations(item: MCItem) -> list[str]:
    """The continuations scored by cloze protocols, one per choice."""
    return [" " + choice for choice in item.choices]


def extract_choice_letter(text: str, n_choices: int) -> int | None:
    """0-based choice index named in a generated answer, or None.

    Cascade (as in the C2C evaluation): an explicit "answer is X" / "Answer: X" /
    "Choice: X" / "Option: X" / "答案是 X"; else a stand-alone letter at the end or before
    punctuation; else the last stand-alone letter. Only letters valid for n_choices count;
    lower-case letters only count when bracketed or followed by punctuation/end ("answer: (b)"),
    so that "the answer is a ..." is not read as A.
    """
    valid = _LETTERS[:n_choices]
    if not valid:
        return None
    low = valid.lower()
    letter = rf"(?:[(\[]\s*([{valid}{low}])\s*[)\]]|([{valid}])\b|([{low}])(?=\s*(?:[.,;:!?]|$)))"
    explicit = rf"(?i:\b(?:answer|choice|option)\b\s*(?:is\b|[:=])|答案\s*(?:是|为)?\s*[:：]?)[\s*:]*{letter}"
    for pattern in (
        explicit,
        rf"(?<![\w-])([{valid}])(?=\s*[.)\]]?\s*$)",  # "... D" / "D." at the end
        rf"(?<![\w-])([{valid}])(?=[.):,])",  # "C) 42", "B. blue"
    ):
        match = re.search(pattern, text)
        if match:
            return _LETTERS.index(next(g for g in match.groups() if g).upper())
    lone = re.findall(rf"(?<![\w-])([{valid}])(?![\w-])", text)
    return _LETTERS.index(lone[-1]) if lone else None


# --------------------------------------------------------------------------- training data


@dataclass
class Conversation:
    messages: list[dict]  # [{"role": "user"|"assistant"|"system", "content": str}, ...]; last = target
    source: str  # "file:line" or "file#index", for error messages
    choices: list[str] | None = None  # multiple choice (target "choices"): the scored continuations
    answer: int | None = None  # index of the right one in ``choices``
    context: str | None = None  # a text only the sharers read (never the receiver, nor a LoRA receiver)


_ROLES = {"system", "user", "assistant"}


def _conversations(
    rows: Iterator[tuple[str, Any]], build: Callable[[Any], list[dict] | None], skip_bad: bool, path: Path
) -> list[Conversation]:
    """Shared loop of the training-data loaders: build() returns messages, None to skip, or raises."""
    out, bad, empty = [], [], 0
    for where, raw in rows:
        try:
            messages = build(raw)
        except _RowError as e:
            if not skip_bad:
                raise DataError(f"{where}: {e}. {_SKIP_HINT}") from None
            bad.append(f"{where}: {e}")
            continue
        if messages is None:
            empty += 1
        else:
            out.append(Conversation(messages, where))
    if empty or bad:
        log.warning("%s: skipped %d empty and %d malformed rows; kept %d", path, empty, len(bad), len(out))
        for line in bad:
            log.warning("skipped %s", line)
    return out


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"training data file {path} not found; pass an existing .json or .jsonl file")
    return path


def _instruction_messages(obj: Any) -> list[dict] | None:
    if not isinstance(obj, dict):
        raise _RowError(f"a JSON {type(obj).__name__}", "an object {instruction, input, output|response}")
    target_key = "output" if "output" in obj else "response"
    values = [obj.get("instruction", ""), obj.get("input") or "", obj.get(target_key, "")]
    if not all(isinstance(v, str) for v in values):
        raise _RowError(f"non-text fields in {str(obj)[:80]!r}", "text instruction, input, output/response")
    instruction, extra, target = (v.strip() for v in values)
    if not instruction or not target:
        return None
    user = f"{instruction}\n\n{extra}" if extra else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": target}]


def load_instruction_json(path: str | Path, skip_bad: bool = False) -> list[Conversation]:
    """Alpaca {instruction, input, output} or GPTeacher {instruction, input, response} lists.

    Rows with an empty instruction or target are skipped and counted (logged).
    """
    path = _existing(path)
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); expected a list of objects") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: a JSON {type(data).__name__}; expected a list of {{instruction, input, output}}")
    rows = ((f"{path}#{i}", obj) for i, obj in enumerate(data))
    return _conversations(rows, _instruction_messages, skip_bad, path)


def _chat_messages(text: str) -> list[dict]:
    messages = _get(_json_obj(text), "messages")
    if not isinstance(messages, list) or not messages:
        raise _RowError(f"messages {str(messages)[:80]!r}", "a non-empty list of messages")
    for m in messages:
        if not isinstance(m, dict) or m.get("role") not in _ROLES or not isinstance(m.get("content"), str):
            raise _RowError(f"message {str(m)[:80]!r}", "{role: system|user|assistant, content: text}")
    if messages[-1]["role"] != "assistant" or not messages[-1]["content"].strip():
        raise _RowError(f"last message {str(messages[-1])[:80]!r}", "a non-empty assistant message last")
    if not any(m["role"] == "user" for m in messages):
        raise _RowError("no user message", "at least one user message before the assistant's")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def load_chat_jsonl(path: str | Path, skip_bad: bool = False) -> list[Conversation]:
    """One {"messages": [...]} per line; the last message must be the assistant's target."""
    path = _existing(path)
    return _conversations(((f"{path}:{n}", t) for n, t in _read_jsonl(path)), _chat_messages, skip_bad, path)


def mc_conversations(items: list[MCItem], prompt_style: str, target: str) -> list[Conversation]:
    """Training pairs from MC items; target "letter", "text", "both" (two per item), or "choices" (the answer
    text, plus every choice's cloze continuation for the choice objective of ``c2c train``)."""
    targets = {"letter": ("letter",), "text": ("text",), "both": ("letter", "text"), "choices": ("choices",)}
    if target not in targets:
        raise ValueError(f"unknown target {target!r}; expected letter, text, both or choices")
    out = []
    for item in items:
        prompt = mc_prompt(item, prompt_style)
        for kind in targets[target]:
            letter = item.letters[item.answer]
            answer = f"The correct answer is {letter}." if kind == "letter" else item.choices[item.answer]
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            choices = cloze_continuations(item) if kind == "choices" else None
            out.append(Conversation(messages, f"{item.id}#{kind}", choices, item.answer if choices else None,
                                    item.context))
    return out


_MC_SPEC_KEYS = {"benchmark", "split", "prompt_style", "target", "limit", "seed"}


def resolve_data_path(
    path: str | Path, data_dir: str | Path | None = None, base_dir: str | Path | None = None
) -> Path:
    """A training data file: an absolute path as given; a relative one against the data dir (data_dir, else
    C2C_DATA_DIR; not a hub dataset), else against base_dir (a recipe's own folder), whichever holds the
    file first. Never against the current directory."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    root, origin = _data_root(data_dir)
    bases = [] if root is None or _hub_id(root) is not None else [(Path(root), f"the data dir, from {origin}")]
    if base_dir is not None:
        bases.append((Path(base_dir), "the recipe's folder"))
    for base, _ in bases:
        if (base / path).is_file():
            return base / path
    looked = "; ".join(f"{base / path} ({what})" for base, what in bases)
    raise DataError(
        f"training data file {path} not found: a relative path resolves against the data dir (data_dir, else "
        f"{DATA_DIR_ENV}), else the recipe's folder, never the current directory; "
        + (f"looked at {looked}" if bases else "neither was given")
        + f". Set data_dir (or {DATA_DIR_ENV}) to the folder that holds it, or give an absolute path."
    )


def load_training_data(
    spec: str | dict,
    data_dir: str | Path | None = None,
    skip_bad: bool = False,
    base_dir: str | Path | None = None,
) -> list[Conversation]:
    """Conversations from a .json (instruction) or .jsonl (chat) file, or from a benchmark.

    A benchmark is given as a dict {"benchmark", "split"="train", "prompt_style"="generate",
    "target"="letter", "limit", "seed"} or a string "benchmark:NAME[:SPLIT[:STYLE[:TARGET]]]", and loaded
    as load_benchmark does (data_dir, else C2C_DATA_DIR, else the hub). A relative file path resolves
    against the data dir, else base_dir (the recipe's folder), never the current directory
    (see resolve_data_path).
    """
    if isinstance(spec, str) and spec.startswith("benchmark:"):
        keys = ("benchmark", "split", "prompt_style", "target")
        spec = dict(zip(keys, spec.split(":")[1:]))
    if isinstance(spec, dict):
        unknown = set(spec) - _MC_SPEC_KEYS
        if unknown or "benchmark" not in spec:
            raise DataError(f"training data spec {spec}: expected keys {sorted(_MC_SPEC_KEYS)}, 'benchmark' set")
        bench = load_benchmark(
            spec["benchmark"],
            spec.get("split", "train"),
            data_dir,
            skip_bad,
            spec.get("limit"),
            spec.get("seed", 0),
        )
        source = f"{bench.name}:{bench.split}"
        style, target = spec.get("prompt_style", "generate"), spec.get("target", "letter")
        conversations = mc_conversations(bench.items, style, target)
    elif str(spec).endswith(".json"):
        path = resolve_data_path(spec, data_dir, base_dir)
        source, conversations = str(path), load_instruction_json(path, skip_bad)
    elif str(spec).endswith(".jsonl"):
        path = resolve_data_path(spec, data_dir, base_dir)
        source, conversations = str(path), load_chat_jsonl(path, skip_bad)
    else:
        raise DataError(
            f"training data {spec!r}: expected a .json (instruction) or .jsonl (chat) file, "
            "a dict with 'benchmark', or 'benchmark:NAME:SPLIT'"
        )
    if not conversations:
        raise DataError(f"no examples in {source}; check the file (or split) is not empty")
    return conversations
