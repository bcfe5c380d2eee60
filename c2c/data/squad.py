"""SQuAD v1.1 (reading comprehension, free-text answers): the official JSON, its rows, and splits by article.

The official format is ``{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
"answers": [{"text", "answer_start"}]}]}]}]}``; the hub's ``rajpurkar/squad`` has one row per question with
``answers: {"text": [...], "answer_start": [...]}``. Both become one item per question: the paragraph as its
``context`` (what only the sharer reads in a context handoff), every reference answer, the article's title and
the question's type (its wh-word) as ``subject``.

Splits are by article, so that no paragraph of a test article is fitted or tuned on: the articles' titles
sorted (the order of the official dev file and of the shared data dir's copy), rank mod 4 = 0, 1 -> train,
2 -> dev, 3 -> test. For SQuAD v1.1 dev (48 articles) that is 24 / 12 / 12 articles; the shared copy
(``squad/dev-v1.1.json``, 9,380 questions) gives 4,596 / 2,497 / 2,287 questions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .rows import DataError, MCItem, Row, RowError, _item, get, read_text

SPLIT_OF_RANK = ("train", "train", "dev", "test")  # an article's split: its title's sorted rank mod 4
QUESTION_TYPES = ("what", "who", "when", "where", "which", "how", "why")
_WH = re.compile(r"\b(what|who|whom|whose|when|where|which|how|why)\b")


def question_type(question: str) -> str:
    """The question's first wh-word (whom and whose count as who), else "other"."""
    match = _WH.search(question.lower())
    return "other" if match is None else "who" if match.group(1) in ("whom", "whose") else match.group(1)


def article_splits(titles: Iterable[str]) -> dict[str, str]:
    """Each article title's split: its rank among the sorted distinct titles, mod 4 (see SPLIT_OF_RANK)."""
    return {title: SPLIT_OF_RANK[rank % len(SPLIT_OF_RANK)] for rank, title in enumerate(sorted(set(titles)))}


def split_rows(rows: Iterable[tuple[str, dict]], split: str) -> Iterator[tuple[str, dict]]:
    """The (where, question record) pairs of one split's articles; reads all rows first (titles rank globally)."""
    rows = list(rows)
    splits = article_splits(str(record.get("title")) for _, record in rows)
    return ((where, record) for where, record in rows if splits[str(record.get("title"))] == split)


def squad_questions(path: Path) -> Iterator[tuple[str, dict]]:
    """(where, question record) per question of an official SQuAD JSON file, every split, in file order: the
    record is the question's object with its article's ``title`` and its paragraph's ``context`` added."""
    what = f"{path}: expected the official SQuAD JSON ({{\"data\": [{{\"title\", \"paragraphs\": [{{\"context\", " \
           "\"qas\": [...]}]}]}})"
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{what}; the file is not JSON ({e.msg} at line {e.lineno})") from None
    articles = data.get("data") if isinstance(data, dict) else None
    if not isinstance(articles, list):
        raise DataError(f"{what}; found no \"data\" list")
    for a, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DataError(f"{what}; article {a} has no \"paragraphs\" list")
        for p, paragraph in enumerate(paragraphs):
            questions = paragraph.get("qas") if isinstance(paragraph, dict) else None
            if not isinstance(questions, list):
                raise DataError(f"{what}; article {a} paragraph {p} has no \"qas\" list")
            for q, qa in enumerate(questions):
                record = {**qa, "title": article.get("title"), "context": paragraph.get("context")} \
                    if isinstance(qa, dict) else qa
                yield f"article {a} paragraph {p} question {q}", record


def read_squad(path: Path, split: str) -> Iterator[tuple[str, dict]]:
    """The questions of one split (by article) of an official SQuAD JSON file."""
    return split_rows(squad_questions(path), split)


def parse_squad(record: Any, row: Row) -> MCItem:
    """One question (official or hub schema) as a free-text item: no choices, its reference answers."""
    if not isinstance(record, dict):
        raise RowError(f"a JSON {type(record).__name__}", "a question object")
    answers = get(record, "answers")
    texts = answers.get("text") if isinstance(answers, dict) else \
        [a.get("text") if isinstance(a, dict) else a for a in answers] if isinstance(answers, list) else None
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise RowError(f"answers {str(answers)[:80]!r}",
                       "a list of {text, answer_start} (or the hub's {text: [...]}) with at least one text")
    question = get(record, "question")
    item = _item(get(record, "id"), question, [], -1, row, question_type(str(question)), get(record, "context"))
    item.references = list(dict.fromkeys(t.strip() for t in texts))
    item.title = str(get(record, "title"))
    return item
