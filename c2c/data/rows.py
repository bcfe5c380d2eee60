"""Row readers and parsers: one row of a benchmark's schema into one `MCItem`, shared by both sources.

Local files (c2c.data.local) and the Hugging Face hub (c2c.data.hub) hand their rows to the same parsers
(ARC, OpenBookQA, MMLU, MMLU-Redux, C-Eval, CommonsenseQA, Tipsheets, generic JSONL), so a row is checked,
and refused with the same message, wherever it comes from. A parser returns an MCItem, or a string: the reason
the row is (deliberately) dropped; a malformed row raises RowError, which the loader turns into a DataError
that names the file and line.
"""

from __future__ import annotations

import ast
import csv
import difflib
import io
import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SKIP_HINT = "Fix the row, or pass --skip-bad (skip_bad=True) to skip malformed rows."
LETTERS = string.ascii_uppercase


class DataError(ValueError):
    """A dataset could not be found or read; the message says where, what and how to fix it."""


class RowError(Exception):
    """One malformed row; the loader adds file:line and raises or skips it."""

    def __init__(self, found: str, expected: str):
        super().__init__(f"{found}; expected {expected}")


@dataclass
class MCItem:
    """A benchmark item: multiple choice, or free text (no choices, ``answer`` -1, its ``references``)."""

    id: str
    question: str
    choices: list[str]
    answer: int  # 0-based index of the gold choice (-1: a free-text item)
    subject: str | None = None
    context: str | None = None  # a text only the sharer reads (context-handoff benchmarks)
    references: list[str] = field(default_factory=list)  # free-text reference answers (SQuAD)
    rivals: list[str] = field(default_factory=list)  # wrong values a free-text answer must not name (synthetic)
    title: str | None = None  # the source document (a SQuAD article)

    @property
    def letters(self) -> list[str]:
        return list(LETTERS[: len(self.choices)])

    @property
    def gold_answers(self) -> list[str]:
        """What a free-text answer is scored against: the references, else the gold choice's text."""
        if self.references:
            return self.references
        if not 0 <= self.answer < len(self.choices):
            raise ValueError(f"item {self.id} has neither reference answers nor a gold choice to score free text by")
        return [self.choices[self.answer]]


# --------------------------------------------------------------------------- file readers


def read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:  # e.g. MMLU-Redux's mmlu_moral_scenarios.csv
        return raw.decode("latin-1")


def read_jsonl(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line; each line is parsed by the row parser."""
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and other line breaks
    for line, text in enumerate(read_text(path).split("\n"), 1):
        if text.strip():
            yield line, text


def _read_table(path: Path, delimiter: str | None = None) -> Iterator[tuple[int, dict]]:
    """(first line of the record, {column: cell}) per non-empty row.

    The delimiter is sniffed from the header when not given (MMLU-Redux mixes `;` and `,`).
    Cells beyond the header are kept under the key None, as csv.DictReader does.
    """
    text = read_text(path)
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


def read_csv(path: Path) -> Iterator[tuple[int, dict]]:
    return _read_table(path)


def read_tsv(path: Path) -> Iterator[tuple[int, dict]]:
    return _read_table(path, "\t")


# --------------------------------------------------------------------------- row validation


@dataclass
class Source:
    """One file, or one config and split of a hub dataset (c2c.data.hub): the rows load_benchmark parses."""

    name: str  # listed in report["files"]
    rows: Iterable[tuple[str, Any]]  # (where, raw) per row; where ("file:line") starts its error messages
    subject: str | None = None
    stem: str = ""  # default ids are "{subject or stem}/{index}"


@dataclass
class Row:
    """Where a row came from, for ids and error messages."""

    where: str
    index: int  # 0-based data row within its source
    subject: str | None
    stem: str
    notes: Counter

    def default_id(self) -> str:
        return f"{self.subject or self.stem}/{self.index}"


def json_obj(text: str) -> dict:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RowError(f"invalid JSON ({e.msg} at column {e.colno})", "one JSON object per line") from None
    if not isinstance(obj, dict):
        raise RowError(f"a JSON {type(obj).__name__}", "a JSON object")
    return obj


def get(obj: dict, key: str) -> Any:
    if obj.get(key) is None:
        raise RowError(f"no field {key!r} (fields: {sorted(k for k in obj if k)})", f"a {key!r} field")
    return obj[key]


def _fields(row: dict, *names: str) -> list[str]:
    """The named cells of a table row, rejecting rows that spill past the header."""
    extra = [c for c in row.get(None, []) if c.strip()]
    if extra:
        raise RowError(
            f"{len(extra)} cell(s) beyond the header (first: {extra[0][:40]!r})",
            "one cell per header column (check the separator and quoting)",
        )
    return [get(row, name) for name in names]


def _choices(value: Any) -> list[str]:
    if not isinstance(value, list) or not 2 <= len(value) <= len(LETTERS):
        raise RowError(f"choices {str(value)[:80]!r}", f"a list of 2-{len(LETTERS)} choices")
    if any(isinstance(c, bool) or not isinstance(c, str | int | float) for c in value):
        raise RowError(f"choices {str(value)[:80]!r}", "text (or number) choices")
    choices = [str(c).strip() for c in value]
    if not all(choices):
        raise RowError(f"an empty choice in {choices}", "non-empty choice texts")
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
        raise RowError(f"answer {value!r}", f"a 0-based index 0-{n - 1} or a letter A-{LETTERS[n - 1]}")
    return index


def _labelled(labels: Any, texts: Any, key: Any) -> tuple[list[str], int]:
    """Choices and gold index from parallel label/text lists and an answer key.

    Shared by both ARC schemas, CommonsenseQA and OpenBookQA. Labels may be A-E or 1-5;
    the key must match exactly one label.
    """
    if not isinstance(labels, list) or not isinstance(texts, list) or len(labels) != len(texts):
        raise RowError(f"labels {labels!r} for {texts!r}", "one label per choice")
    choices = _choices(texts)
    wanted = str(key).strip().upper()
    hits = [i for i, label in enumerate(labels) if str(label).strip().upper() == wanted]
    if len(hits) != 1:
        raise RowError(f"answer key {key!r} matching {len(hits)} of the labels {labels}", "one match")
    return choices, hits[0]


def _item(id_: Any, question: Any, choices: list[str], answer: int, row: Row, subject: Any = None,
          context: Any = None) -> MCItem:
    if not isinstance(question, str) or not question.strip():
        raise RowError(f"question {question!r}", "a non-empty question text")
    if context is not None and (not isinstance(context, str) or not context.strip()):
        raise RowError(f"context {str(context)[:80]!r}", "a non-empty text (or no context field)")
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


def parse_arc(text: str, row: Row) -> MCItem:
    """ARC / CommonsenseQA, in the original schema or the Hugging Face `ai2_arc` schema."""
    obj = json_obj(text)
    question = get(obj, "question")
    if isinstance(question, dict):  # original: question.stem, question.choices[{label, text}]
        stem, raw = get(question, "stem"), get(question, "choices")
        if not isinstance(raw, list) or not all(isinstance(c, dict) for c in raw):
            raise RowError(f"question.choices {str(raw)[:80]!r}", "a list of {label, text} objects")
        labels, texts = [c.get("label") for c in raw], [c.get("text") for c in raw]
    else:  # Hugging Face: question, choices{text[], label[]}
        stem, raw = question, get(obj, "choices")
        if not isinstance(raw, dict):
            raise RowError(f"choices {str(raw)[:80]!r}", "an object {text: [...], label: [...]}")
        labels, texts = raw.get("label"), raw.get("text")
    choices, answer = _labelled(labels, texts, get(obj, "answerKey"))
    return _item(get(obj, "id"), stem, choices, answer, row)


def parse_arc_evidence(text: str, row: Row) -> MCItem | str:
    """ARC with its per-choice retrieved evidence (``para``, original schema) as the sharer's context: every
    choice's evidence in choice order, so the context does not point at the answer by its shape."""
    item = parse_arc(text, row)
    choices = json_obj(text)["question"]
    paras = [c.get("para", "").strip() for c in choices["choices"]] if isinstance(choices, dict) else []
    if not any(paras):
        return "no evidence"
    item.context = " ".join(p if p.endswith(".") else p + "." for p in paras if p)
    return item


_OBQA_MARK = re.compile(r"(?:^|\s+)\(([A-Z])\)\s+")


def parse_openbookqa(cells: dict, row: Row) -> MCItem:
    """Choices come as one string "(A) .. (B) .. (C) .. (D) ..", split at the markers."""
    id_, stem, packed, key = _fields(cells, "ID", "Question Stem", "Choices", "Answer Key")
    parts = _OBQA_MARK.split(packed)
    if parts[0].strip() or len(parts) < 5:
        raise RowError(f"choices {packed[:80]!r}", 'a string "(A) ... (B) ..."')
    choices, answer = _labelled(parts[1::2], parts[2::2], key)
    return _item(id_, stem, choices, answer, row)


def parse_mmlu(cells: dict, row: Row) -> MCItem:
    columns = ("question", "choice0", "choice1", "choice2", "choice3", "answer")
    question, *choices, answer = _fields(cells, *columns)
    choices = _choices(choices)
    return _item(None, question, choices, _answer_index(answer, len(choices)), row)


def parse_ceval(cells: dict, row: Row) -> MCItem:
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
        raise RowError(f"error_type {raw!r}", f"one of {', '.join(_REDUX_TYPES)}")
    return match[0]


def parse_mmlu_redux(cells: dict, row: Row) -> MCItem | str:
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
        raise RowError(f"choices {raw_choices[:80]!r}", "a Python list literal like ['a', 'b']") from None
    item = _item(None, question, choices, _answer_index(answer, len(choices)), row)
    if error_type == "wrong_groundtruth":
        row.notes["answer_fixed"] += 1
    return item


def _texts(obj: dict, key: str) -> list[str]:
    """An optional list of non-empty texts (``references``, ``rivals``); [] when absent."""
    value = obj.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise RowError(f"{key} {str(value)[:80]!r}", "a list of non-empty texts (or no such field)")
    return [v.strip() for v in value]


def parse_generic(text: str, row: Row) -> MCItem:
    """question, choices, answer; optional id, subject, context, and for free-text scoring references and rivals."""
    obj = json_obj(text)
    choices = _choices(get(obj, "choices"))
    answer = _answer_index(get(obj, "answer"), len(choices))
    item = _item(obj.get("id"), get(obj, "question"), choices, answer, row, obj.get("subject"), obj.get("context"))
    item.references, item.rivals = _texts(obj, "references"), _texts(obj, "rivals")
    return item


def parse_tipsheets(text: str, row: Row) -> MCItem:
    """KVComm's Tipsheets: ``prompt_A`` is the context only the sharer reads, ``prompt_B`` the question."""
    obj = json_obj(text)
    choices = _choices(get(obj, "options"))
    label = get(obj, "label")
    if label not in choices:
        raise RowError(f"label {label!r} not among the options {choices}", "one of the options")
    return _item(obj.get("id"), get(obj, "prompt_B"), choices, choices.index(label), row, None, get(obj, "prompt_A"))

