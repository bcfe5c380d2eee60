"""Write arc_challenge_demo.jsonl: the ARC-Challenge test questions that examples/side_by_side.py asks offline.

    C2C_DATA_DIR=/path/to/data python examples/data/make_arc_challenge_demo.py   # or --data-dir DIR (or hf)

50 questions of the seeded sample load_benchmark("arc-challenge", "test", limit=50, seed=1), in the generic
JSONL format (id, question, choices, answer as a 0-based index) that load_benchmark("....jsonl") reads.
Lines 1-5 are the demo's default questions, limit=5 with the same seed (the first five of that sample),
in the order the demo asks them; lines 6-50 are the other 45, in benchmark order. Source and licence: README.md.
"""

import argparse
import json
from pathlib import Path

from c2c.data import load_benchmark

OUT = Path(__file__).resolve().parent / "arc_challenge_demo.jsonl"
SIZE, FIRST, SEED = 50, 5, 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="the data dir (default: $C2C_DATA_DIR, else the Hugging Face hub)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    first = load_benchmark("arc-challenge", "test", args.data_dir, limit=FIRST, seed=SEED).items
    sample = load_benchmark("arc-challenge", "test", args.data_dir, limit=SIZE, seed=SEED).items
    assert {item.id for item in first} <= {item.id for item in sample}  # a larger seeded sample extends a smaller
    ids = {item.id for item in first}
    items = first + [item for item in sample if item.id not in ids]
    with open(args.out, "w", encoding="utf-8") as out:
        for item in items:
            record = {"id": item.id, "question": item.question, "choices": item.choices, "answer": item.answer}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"wrote {len(items)} questions to {args.out}")


if __name__ == "__main__":
    main()
