"""Seeded synthetic context tasks: facts about people that only the sharer reads, and a question about one.

    context:  "Mira's home city is Lisbon. Oskar's pet is a pony."
    question: "What is Mira's home city?"          choices: three home cities, one of them Lisbon

Names and attribute values are disjoint across the train, dev and test splits, so nothing learned about a test
name or value can come from training; the right answer's position is balanced over the items, and the option
order is drawn independently of the context. Without the context every method is at chance (1/3). Each item
lists as ``rivals`` every other value of its attribute (of all splits): a free-text answer passes the generation
score when it names the right value and none of them.

Benchmarks ``synthetic-Nfact`` (N facts per context, 1 to 64; 1, 3 and 5 are the usual) are generated on the fly
by ``load_benchmark``; ``synthetic_items`` gives any size and seed.
"""

from __future__ import annotations

import random

NAMES = """Mira Oskar Talia Bruno Greta Ivan Lena Marco Nadia Otto Petra Rafael Sonja Tomas Ursula Viktor Wanda
Yusuf Zora Anton Bianca Cyril Dafne Emil Flora Gustav Hanna Igor Jana Kasimir Livia Matteo Nora Orson Paula Quentin
Rosa Stefan Tilda Umberto Vera Walter Xenia Yannick Zelda Adrian Berta Caspar Delia Enzo Fiona Gideon Helga Ingrid
Jasper Katja Ludwig Magda Niklas Olga Pascal Renata Silas Thea Ulrich Valentina Wilhelm Yvonne Zeno Amira Benedikt
Clara Dorian Elsa Felix Giulia Henrik Iris Julius Klara Leopold Maren Nils Ophelia Philipp Ruth Samuel Tessa Vincent""".split()

ATTRIBUTES = {  # attribute -> (question phrase, statement template, values)
    "city": ("home city", "{name}'s home city is {value}.",
             "Lisbon Oslo Paris Cairo Lima Tokyo Madrid Dublin Vienna Prague Berlin Rome Athens Warsaw Havana Nairobi "
             "Seoul Sydney Toronto Boston Denver Delhi Manila Quito".split()),
    "colour": ("favourite colour", "{name}'s favourite colour is {value}.",
               "teal red blue green yellow purple orange pink brown black white grey violet amber crimson".split()),
    "pet": ("pet", "{name}'s pet is a {value}.",
            "dog cat pony parrot rabbit hamster goldfish turtle ferret lizard snake canary goat pig duck".split()),
    "job": ("job", "{name}'s job is {value}.",
            "nurse pilot baker teacher doctor farmer lawyer chef painter plumber dentist sailor tailor banker "
            "writer".split()),
    "fruit": ("favourite fruit", "{name}'s favourite fruit is {value}.",
              "apple banana cherry mango peach pear plum grape lemon melon kiwi papaya lime fig apricot".split()),
}
SPLITS = ("train", "dev", "test")
MAX_FACTS = 64  # per context (about 500 receiver tokens): a split has 33 names, 5 attributes each


def _split_share(values: list[str], split: str) -> list[str]:
    """A fixed third of ``values`` per split (interleaved, so every split gets a spread of the list)."""
    return values[SPLITS.index(split)::len(SPLITS)]


def synthetic_items(split: str, n: int, facts: int = 1, seed: int = 0) -> list[dict]:
    """``n`` items in the generic multiple-choice JSONL shape with a ``context``; deterministic in the seed."""
    if split not in SPLITS:
        raise ValueError(f"synthetic split {split!r} is unknown; expected one of {SPLITS}")
    if not 1 <= facts <= MAX_FACTS:
        raise ValueError(f"facts per context must be within 1..{MAX_FACTS}, got {facts}")
    names = _split_share(NAMES, split)
    values = {a: _split_share(v, split) for a, (_, _, v) in ATTRIBUTES.items()}
    rng = random.Random(f"{split}:{facts}:{seed}")
    answer_positions = [i % 3 for i in range(n)]
    rng.shuffle(answer_positions)
    items = []
    for index in range(n):
        if facts <= len(names):  # one fact per person
            people = rng.sample(names, facts)
            attributes = [rng.choice(list(ATTRIBUTES)) for _ in people]
        else:  # long contexts: several facts per person, never two of one attribute
            people, attributes = zip(*rng.sample([(p, a) for p in names for a in ATTRIBUTES], facts))
        facts_of = [(person, attribute, rng.choice(values[attribute])) for person, attribute in zip(people, attributes)]
        asked = rng.randrange(facts)
        person, attribute, answer = facts_of[asked]
        phrase, _, _ = ATTRIBUTES[attribute]
        distractors = rng.sample([v for v in values[attribute] if v != answer], 2)
        choices = list(distractors)
        choices.insert(answer_positions[index], answer)
        context = " ".join(ATTRIBUTES[a][1].format(name=p, value=v) for p, a, v in facts_of)
        items.append({"id": f"synthetic-{facts}fact-{split}-{seed}-{index}", "question": f"What is {person}'s {phrase}?",
                      "choices": choices, "answer": answer_positions[index], "context": context,
                      "subject": attribute, "rivals": [v for v in ATTRIBUTES[attribute][2] if v != answer]})
    return items


def synthetic_benchmark_facts(name: str) -> int | None:
    """1 for ``synthetic-1fact`` and so on; None for any other name."""
    if name.startswith("synthetic-") and name.endswith("fact") and name[len("synthetic-"):-len("fact")].isdigit():
        return int(name[len("synthetic-"):-len("fact")])
    return None


SYNTHETIC_SIZES = {"train": 6000, "dev": 500, "test": 1000}  # items per split of a built-in synthetic benchmark
