"""Does the translation itself get worse far into a long context? R^2 of translated K/V against the receiver's own
K/V of the same text, by the token's position in the context (issue 32's length study, its longest contexts).

    python benchmarks/context_length_reconstruction.py OUT.json NAME=DIR [NAME=DIR ...]
        [--contexts results/context_handoff/length/inputs/squad_4096.json]

Each context is read once by both models (position-free K/V, as the fit reads them); every translator maps the same
sharer features. R^2 per position bucket (against each output's mean within the bucket), over all receiver layers,
K and V apart.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from c2c.model.pair import C2CModel
from c2c.translator.fit import flat_features, token_pairs
from c2c.translator.model import token_kv

BUCKETS = ((0, 512), (512, 1024), (1024, 2048), (2048, 4096))


def features(pair: C2CModel, text: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per sharer layer (T, 2 H_S d_S) inputs and per receiver layer (T, 2 H_R d_R) targets at the T context tokens."""
    r_ids, s_ids, sharer_positions, targets = token_pairs(pair.receiver, pair.sharers[0], text)
    return (flat_features(token_kv(pair.sharers[0], [s_ids], [sharer_positions])),
            flat_features(token_kv(pair.receiver, [r_ids], [targets])))


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("translators", nargs="+", help="NAME=DIR")
    parser.add_argument("--contexts", type=Path, default=Path("results/context_handoff/length/inputs/squad_4096.json"))
    args = parser.parse_args()
    texts = [p["context"] for article in json.loads(args.contexts.read_text())["data"] for p in article["paragraphs"]]
    pairs = {}
    for spec in args.translators:
        name, folder = spec.split("=", 1)
        first = next(iter(pairs.values()), None)
        pairs[name] = C2CModel.from_pretrained(folder, first and first.receiver, first and first.sharers)
    half = next(iter(pairs.values())).translators[0].maps[0].weight.shape[0] // 2
    sums = {bucket: {"n": 0, "y": 0.0, "yy": 0.0, **{name: 0.0 for name in pairs}} for bucket in BUCKETS}
    for text in texts:
        inputs, targets = features(next(iter(pairs.values())), text)
        y = torch.stack(targets).double()  # (L, T, O)
        outputs = {name: torch.stack(pair.translators[0].map_features(inputs)).double() for name, pair in pairs.items()}
        for low, high in BUCKETS:  # per bucket, per layer and output: sums for R^2 against the bucket's own mean
            part, total = slice(low, high), sums[(low, high)]
            total["n"] += y[:, part].shape[1]
            total["y"] = total["y"] + y[:, part].sum(1)
            total["yy"] = total["yy"] + (y[:, part] ** 2).sum(1)
            for name, out in outputs.items():
                total[name] = total[name] + ((out[:, part] - y[:, part]) ** 2).sum(1)
    result = {"command": "python benchmarks/context_length_reconstruction.py " + " ".join(
        [str(args.out), *args.translators, "--contexts", str(args.contexts)]), "contexts": len(texts), "buckets": {}}
    for (low, high), total in sums.items():
        row = {"tokens": total["n"]}
        if total["n"] > 1:
            spread = total["yy"] - total["y"] ** 2 / total["n"]  # (L, O): n times each output's variance
            for name in pairs:
                row[name] = {slot: round(1 - float(total[name][:, cols].sum() / spread[:, cols].sum()), 4)
                             for slot, cols in (("r2_k", slice(0, half)), ("r2_v", slice(half, None)))}
        result["buckets"][f"{low}-{high}"] = row
        print(f"{low}-{high}", row)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
