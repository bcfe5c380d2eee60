"""Free-text answers: the short answer read from a generated text, and its scores.

SQuAD's official normalisation (``evaluate-v1.1.py``: lower case, punctuation, the articles a/an/the and extra
whitespace removed), exact match and token F1, each the maximum over all reference answers; answer recall (a
normalised reference appears, on word boundaries, in the normalised answer); and the synthetic tasks' generation
score (the answer names the right value and no rival value of that attribute). Pure Python.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_PUNCTUATION = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation, step for step as its official script."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(answer: str, references: list[str]) -> bool:
    return any(normalize_answer(answer) == normalize_answer(reference) for reference in references)


def token_f1(answer: str, reference: str) -> float:
    """SQuAD's F1 of the normalised tokens (0 when they share none)."""
    mine, theirs = normalize_answer(answer).split(), normalize_answer(reference).split()
    same = sum((Counter(mine) & Counter(theirs)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(mine), same / len(theirs)
    return 2 * precision * recall / (precision + recall)


def f1(answer: str, references: list[str]) -> float:
    return max(token_f1(answer, reference) for reference in references)


def names(answer: str, value: str) -> bool:
    """Whether the normalised ``value`` appears in the normalised answer on word boundaries."""
    value = normalize_answer(value)
    return bool(value) and f" {value} " in f" {normalize_answer(answer)} "


def answer_recall(answer: str, references: list[str]) -> bool:
    return any(names(answer, reference) for reference in references)


def free_text_scores(answer: str, references: list[str], rivals: list[str] = ()) -> dict:
    """A record's free-text scores: exact_match, f1, recall, and with ``rivals`` the generation score (the
    answer names a reference and no rival)."""
    if not references:
        raise ValueError("free-text scoring needs at least one reference answer")
    scores = {"exact_match": exact_match(answer, references), "f1": round(f1(answer, references), 4),
              "recall": answer_recall(answer, references)}
    if rivals:
        scores["generation"] = scores["recall"] and not any(names(answer, rival) for rival in rivals)
    return scores


# ------------------------------------------------------------------------------------------------ extraction
_STATED = re.compile(r"^(?:A:\s*|(?:the\s+)?(?:short\s+)?answer(?:\s+to\s+(?:this|the)\s+question)?"
                     r"(?:\s+is)?\s*[:\-]?\s*)", re.IGNORECASE)  # "The answer is:", "Answer:", "A:"
# a sentence ends at . ! ? before a space, except after an initial ("E. W.", "U.S.") or a title ("Dr.")
_SENTENCE_END = re.compile(r"(?<![A-Z])(?<!\bDr)(?<!\bMr)(?<!\bMrs)(?<!\bMs)(?<!\bSt)(?<!\bvs)[.!?](?=\s)")
_COPULA = re.compile(r"\b(?:is|are|was|were|did|does|do|has|have|had)\b", re.IGNORECASE)


def extract_answer(text: str, question: str = "") -> str:
    """The short answer in a generated text: its first non-empty line, without a leading "The answer is:" (or
    "A:"), cut at the end of its first sentence, without a restatement of the question ("Zelda's pet is a turtle."
    for "What is Zelda's pet?" gives "a turtle")."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    while (stated := _STATED.sub("", line, count=1)) != line:  # also "The answer is: The answer is: ..."
        line = stated
    sentence = _SENTENCE_END.split(line, maxsplit=1)[0]
    return strip_restatement(sentence, question).strip().rstrip(".")


def strip_restatement(answer: str, question: str) -> str:
    """``answer`` without a leading restatement of the question: the words up to a copula ("is", "was", ...)
    when every word before it comes from the question."""
    asked = set(normalize_answer(question).split())
    for match in _COPULA.finditer(answer):
        before = normalize_answer(answer[:match.start()]).split()
        if before and all(word in asked for word in before):
            return answer[match.end():].strip() or answer
    return answer
