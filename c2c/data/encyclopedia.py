"""A seeded fictional encyclopedia of people, for the knowledge-handoff setting (issue 34): a sharer fine-tuned on
it knows every person, the receiver knows none, and both read the same question alone.

    people:    "Mira Castellan" (a first name of ``synthetic.NAMES`` + an invented surname, unique per person),
               one value per attribute of ``synthetic.ATTRIBUTES`` (home city, favourite colour, pet, job, fruit)
    corpus:    every fact of every person in several phrasings ("Mira Castellan's home city is Lisbon.",
               "Mira Castellan lives in Lisbon.", "The home city of Mira Castellan is Lisbon.", ...), plus by
               default the cloze question and its answer ("Question: What is Mira Castellan's home city?\\nAnswer:
               Lisbon"), the form the probe and ``c2c eval --scoring cloze`` read
    questions: generic multiple-choice JSONL (question, choices, answer, id; no context: both models read the
               question alone), one question per person and attribute, the choices drawn from the attribute's
               values of the person's value pool, the right answer's position balanced

Person sets (``PERSON_SETS``), disjoint by name (and surname):
    fuser_train   the fuser's (and the LoRA receiver's) training questions
    dev           choosing settings (probe regularisation, training steps); values from the same pool
    held_out      the test: people the fuser never saw, values from the pool the fuser-train people use
    novel_dev     dev questions whose values come from the novel pool
    novel_values  the second test: values that no fuser-train (or dev, or held-out) person has
Each attribute's values are split (a fixed interleaved third is ``novel``, the rest ``seen``), so the novel pool
is disjoint from the seen one. The sharer's corpus covers every person of every set.

Deterministic in the seed; pure Python (no torch).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from .prompts import mc_prompt
from .rows import MCItem
from .synthetic import ATTRIBUTES, NAMES

PERSON_SETS = ("fuser_train", "dev", "held_out", "novel_dev", "novel_values")
POOL_OF_SET = {"fuser_train": "seen", "dev": "seen", "held_out": "seen", "novel_dev": "novel", "novel_values": "novel"}
# People per set: 5 questions each, so held_out and novel_values have 600 questions, fuser_train 2,000.
DEFAULT_SIZES = {"fuser_train": 400, "dev": 40, "held_out": 120, "novel_dev": 40, "novel_values": 120}
DEFAULT_CHOICES = 4

# Phrasings beyond synthetic's statement template and the generic "The {phrase} of {name} is {value}.";
# {a_value} is the value with its article ("a pony").
EXTRA_PHRASINGS = {
    "city": ["{name} lives in {value}.", "{name} calls {value} home."],
    "colour": ["{name} likes the colour {value} best.", "Of all colours, {name} prefers {value}."],
    "pet": ["{name} keeps {a_value} as a pet.", "{name} has {a_value} at home."],
    "job": ["{name} works as {a_value}.", "By profession, {name} is {a_value}."],
    "fruit": ["{name} likes {value} more than any other fruit.", "The fruit {name} enjoys most is {value}."],
}
_ONSETS = "b c d f g h k l m n p r s t v z br dr st".split()
_VOWELS = "a e i o u".split()
_CODAS = ["", "", "", "n", "r", "l", "s"]
_ENDINGS = "an el in or ard ell ova ini ek berg feld mont".split()


def value_pools() -> dict[str, dict[str, list[str]]]:
    """``{"seen": {attribute: values}, "novel": {...}}``: every third value of each attribute (from the third on)
    is novel, the rest seen; disjoint, and together every value."""
    pools: dict[str, dict[str, list[str]]] = {"seen": {}, "novel": {}}
    for attribute, (_, _, values) in ATTRIBUTES.items():
        pools["novel"][attribute] = values[2::3]
        pools["seen"][attribute] = [v for i, v in enumerate(values) if i % 3 != 2]
    return pools


def phrasings(attribute: str) -> list[str]:
    """The statement templates of an attribute (at least 3): synthetic's own, a generic one, and its extras."""
    phrase, statement, _ = ATTRIBUTES[attribute]
    return [statement, f"The {phrase} of {{name}} is {{value}}.", *EXTRA_PHRASINGS[attribute]]


def _with_article(value: str) -> str:
    return f"{'an' if value[0].lower() in 'aeiou' else 'a'} {value}"


def fact_sentences(name: str, attribute: str, value: str) -> list[str]:
    return [t.format(name=name, value=value, a_value=_with_article(value)) for t in phrasings(attribute)]


def question_text(name: str, attribute: str) -> str:
    return f"What is {name}'s {ATTRIBUTES[attribute][0]}?"


@dataclass(frozen=True)
class Person:
    name: str
    person_set: str
    facts: dict[str, str] = field(hash=False)  # attribute -> value


def _surnames(rng: random.Random, count: int) -> list[str]:
    out: dict[str, None] = {}
    while len(out) < count:
        syllables = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                            for _ in range(rng.randint(1, 2)))
        out.setdefault((syllables + rng.choice(_ENDINGS)).capitalize(), None)
    return list(out)


@dataclass
class Encyclopedia:
    """The people of every set, with their facts; build it with ``Encyclopedia.build(seed, sizes)``."""

    seed: int
    sizes: dict[str, int]
    people: dict[str, list[Person]]  # set -> people

    @classmethod
    def build(cls, seed: int = 0, sizes: dict[str, int] | None = None) -> "Encyclopedia":
        sizes = {**DEFAULT_SIZES, **(sizes or {})}
        unknown = set(sizes) - set(PERSON_SETS)
        if unknown or any(not isinstance(n, int) or n < 1 for n in sizes.values()):
            raise ValueError(f"encyclopedia sizes {sizes}: expected a positive number of people for each of "
                             f"{PERSON_SETS}")
        rng = random.Random(f"encyclopedia:{seed}")
        surnames = _surnames(rng, sum(sizes.values()))
        rng.shuffle(surnames)
        pools = value_pools()
        people, start = {}, 0
        for person_set in PERSON_SETS:
            count = sizes[person_set]
            names = [f"{rng.choice(NAMES)} {surname}" for surname in surnames[start:start + count]]
            start += count
            pool = pools[POOL_OF_SET[person_set]]
            columns = {}  # each value about equally often within a set: a balanced, shuffled round-robin
            for attribute, values in pool.items():
                column = [values[i % len(values)] for i in range(count)]
                rng.shuffle(column)
                columns[attribute] = column
            people[person_set] = [Person(name, person_set, {a: columns[a][i] for a in ATTRIBUTES})
                                  for i, name in enumerate(names)]
        return cls(seed, sizes, people)

    def all_people(self) -> list[Person]:
        return [p for s in PERSON_SETS for p in self.people[s]]

    def corpus(self, questions: bool = True) -> list[dict]:
        """The sharer's training texts, one fact sentence per row ({"text", "person", "attribute"}), every
        phrasing of every fact of every person (of all sets), and with ``questions`` the cloze question followed
        by its answer; shuffled (seeded)."""
        rows = []
        for person in self.all_people():
            for attribute, value in person.facts.items():
                texts = fact_sentences(person.name, attribute, value)
                if questions:
                    item = MCItem(id="", question=question_text(person.name, attribute), choices=[value], answer=0)
                    texts.append(f"{mc_prompt(item, 'cloze')} {value}")
                rows += [{"text": t, "person": person.name, "attribute": attribute} for t in texts]
        random.Random(f"encyclopedia-corpus:{self.seed}").shuffle(rows)
        return rows

    def questions(self, person_set: str, choices: int = DEFAULT_CHOICES) -> list[dict]:
        """Every question about the people of ``person_set`` as generic multiple-choice rows (no context), in a
        seeded order; ``choices`` values of the attribute from the set's pool, the answer's position balanced."""
        if person_set not in PERSON_SETS:
            raise ValueError(f"person set {person_set!r} is unknown; expected one of {PERSON_SETS}")
        pool = value_pools()[POOL_OF_SET[person_set]]
        smallest = min(len(v) for v in pool.values())
        if not 2 <= choices <= smallest:
            raise ValueError(f"choices={choices}: expected 2..{smallest} (the smallest attribute pool)")
        rng = random.Random(f"encyclopedia-questions:{self.seed}:{person_set}:{choices}")
        asked = [(p, a) for p in self.people[person_set] for a in ATTRIBUTES]
        rng.shuffle(asked)
        positions = [i % choices for i in range(len(asked))]
        rng.shuffle(positions)
        items = []
        for index, ((person, attribute), position) in enumerate(zip(asked, positions)):
            answer = person.facts[attribute]
            options = rng.sample([v for v in pool[attribute] if v != answer], choices - 1)
            options.insert(position, answer)
            items.append({"id": f"encyclopedia-{self.seed}-{person_set}-{index}",
                          "question": question_text(person.name, attribute), "choices": options,
                          "answer": position, "subject": attribute, "person": person.name,
                          "rivals": [v for v in ATTRIBUTES[attribute][2] if v != answer]})
        return items


def write_encyclopedia(folder: str | Path, seed: int = 0, sizes: dict[str, int] | None = None,
                       choices: int = DEFAULT_CHOICES, corpus_questions: bool = True) -> dict[str, Path]:
    """Write the encyclopedia's files into ``folder``: ``corpus.jsonl`` (the sharer's texts, {"text", ...} per
    line), ``{set}.jsonl`` per person set (generic multiple-choice rows that ``load_benchmark(path)`` and
    ``c2c eval --bench`` read), ``people.json`` (every person's facts) and ``manifest.json`` (the settings and
    counts). Returns {"corpus": path, set: path, ..., "people": path, "manifest": path}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    book = Encyclopedia.build(seed, sizes)
    paths: dict[str, Path] = {}

    def lines(path: Path, rows: list[dict]) -> Path:
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        return path

    corpus = book.corpus(corpus_questions)
    paths["corpus"] = lines(folder / "corpus.jsonl", corpus)
    counts = {}
    for person_set in PERSON_SETS:
        rows = book.questions(person_set, choices)
        paths[person_set] = lines(folder / f"{person_set}.jsonl", rows)
        counts[person_set] = {"people": len(book.people[person_set]), "questions": len(rows)}
    people = {s: [{"name": p.name, **p.facts} for p in book.people[s]] for s in PERSON_SETS}
    paths["people"] = folder / "people.json"
    paths["people"].write_text(json.dumps(people, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    manifest = {"seed": seed, "sizes": book.sizes, "choices": choices, "corpus_questions": corpus_questions,
                "corpus_texts": len(corpus), "sets": counts, "value_pools": value_pools(),
                "pool_of_set": POOL_OF_SET}
    paths["manifest"] = folder / "manifest.json"
    paths["manifest"].write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return paths
