"""Write squad_demo.json: the SQuAD v1.1 paragraphs that examples/side_by_side.py answers from offline.

    C2C_DATA_DIR=/path/to/data python examples/data/make_squad_demo.py   # or --data-dir DIR

Four paragraphs of SQuAD v1.1 dev articles in c2c's test split (c2c.data.squad: no fit, training or prompt choice
saw them), with all their questions and answers, in the official SQuAD JSON format, unchanged. Source and
licence: README.md.
"""

import argparse
import json
from pathlib import Path

from c2c.data import article_splits
from c2c.data.local import data_root

OUT = Path(__file__).resolve().parent / "squad_demo.json"
# (article title, how its paragraph starts): short paragraphs of test articles with factual questions
PARAGRAPHS = [("University_of_Chicago", "Other prominent alumni include anthropologists"),
              ("Islamism", "Some elements of the Brotherhood"),
              ("Computational_complexity_theory", "Earlier papers studying problems"),
              ("Packet_switching", "The CYCLADES packet switching network")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", help="the data dir holding squad/dev-v1.1.json (default: $C2C_DATA_DIR)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    root, _ = data_root(args.data_dir)
    if root is None:
        parser.error("give the data dir holding squad/dev-v1.1.json: --data-dir DIR or C2C_DATA_DIR=DIR")
    data = json.loads((Path(root) / "squad" / "dev-v1.1.json").read_text(encoding="utf-8"))["data"]
    splits = article_splits(article["title"] for article in data)
    articles = {article["title"]: article for article in data}
    chosen = []
    for title, start in PARAGRAPHS:
        assert splits[title] == "test", f"{title} is in c2c's {splits[title]} split, not test"
        (paragraph,) = [p for p in articles[title]["paragraphs"] if p["context"].startswith(start)]
        chosen.append({"title": title, "paragraphs": [paragraph]})
    Path(args.out).write_text(json.dumps({"version": "1.1", "data": chosen}, ensure_ascii=False, indent=1) + "\n",
                              encoding="utf-8")
    questions = sum(len(a["paragraphs"][0]["qas"]) for a in chosen)
    print(f"wrote {len(chosen)} paragraphs, {questions} questions to {args.out}")


if __name__ == "__main__":
    main()
