"""Per-layer reconstruction of context translators: how close each translator's K/V come to the receiver's own K/V
of the same texts (R^2 per receiver layer, K and V apart), on texts no fit or training saw.

    python benchmarks/translator_reconstruction.py OUT.json NAME=DIR [NAME=DIR ...] [--texts N]

Texts: synthetic dev-split facts (1 and 3 per context; names and values unseen in every fit) and SQuAD dev-article
paragraphs (cut to 500 characters, as the fit's texts were) when the data dir has SQuAD. Phase 2 optimises what the
receiver does with the K/V, not the K/V themselves; this says how far that moved them from the receiver's own.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from c2c.data import load_benchmark
from c2c.training.fit_translators import fitting_texts
from c2c.model.pair import C2CModel
from c2c.translator.fit import translation_examples


def texts(count: int) -> dict[str, list[str]]:
    out = {"synthetic dev": fitting_texts([{"synthetic": count, "facts": 1, "split": "dev"},
                                           {"synthetic": count, "facts": 3, "split": "dev"}])}
    try:
        paragraphs = dict.fromkeys(item.context for item in load_benchmark("squad", "dev", limit=4 * count).items)
        out["squad dev"] = [p[:500] for p in list(paragraphs)[:count]]
    except Exception as error:  # no SQuAD here: synthetic texts only
        print(f"squad skipped: {error}")
    return out


@torch.no_grad()
def r2_per_layer(pair: C2CModel, corpus: list[str]) -> dict[str, list[float]]:
    """R^2 of the translated K and V against the receiver's own, per receiver layer, over every token of ``corpus``."""
    translator, half = pair.translators[0], pair.translators[0].maps[0].weight.shape[0] // 2
    sse = total = None
    for inputs, targets in translation_examples(pair.receiver, pair.sharers[0], corpus):
        outputs = translator.map_features(inputs)
        error = torch.stack([((o - t) ** 2).double().sum(0) for o, t in zip(outputs, targets)])  # (L, O)
        spread = torch.stack([t.double().pow(2).sum(0) for t in targets]), \
            torch.stack([t.double().sum(0) for t in targets]), inputs[0].shape[0]
        sse = error if sse is None else sse + error
        total = spread if total is None else (total[0] + spread[0], total[1] + spread[1], total[2] + spread[2])
    squares, sums, n = total
    variance = squares - sums ** 2 / n  # (L, O): n times each output's variance
    return {slot: [round(1 - float(sse[l, cols].sum() / variance[l, cols].sum()), 4) for l in range(sse.shape[0])]
            for slot, cols in (("k", slice(0, half)), ("v", slice(half, None)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("translators", nargs="+", help="NAME=DIR")
    parser.add_argument("--texts", type=int, default=60)
    args = parser.parse_args()
    corpora = texts(args.texts)
    result = {"command": "python benchmarks/translator_reconstruction.py " + " ".join(
        [args.out, *args.translators, "--texts", str(args.texts)]), "texts": {k: len(v) for k, v in corpora.items()},
        "translators": {}}
    receiver = sharers = None
    for spec in args.translators:
        name, folder = spec.split("=", 1)
        started = time.perf_counter()
        pair = C2CModel.from_pretrained(folder, receiver, sharers)  # the models load once
        receiver, sharers = pair.receiver, pair.sharers
        entry = {"folder": folder}
        for corpus, corpus_texts in corpora.items():
            r2 = r2_per_layer(pair, corpus_texts)
            entry[corpus] = {**r2, "mean_k": round(sum(r2["k"]) / len(r2["k"]), 4),
                             "mean_v": round(sum(r2["v"]) / len(r2["v"]), 4)}
        entry["seconds"] = round(time.perf_counter() - started, 1)
        result["translators"][name] = entry
        print(name, {c: (entry[c]["mean_k"], entry[c]["mean_v"]) for c in corpora})
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
