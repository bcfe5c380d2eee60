"""Where the knowledge lives (issue 34, item 3): a linear probe per layer on a model's own K/V at the question's
tokens, predicting the answer value of encyclopedia questions about people it was not fitted on.

    python benchmarks/knowledge_probe.py --model sharer=runs/knowledge_handoff/sharer \\
        --model receiver=smollm2-135m-instruct [--encyclopedia runs/knowledge_handoff/encyclopedia] \\
        [--train-set fuser_train --dev-set dev --test-set held_out] [--out results/knowledge_handoff/probe]

Each model reads the prompt the fuser and ``c2c eval --scoring cloze`` give it, "Question: {question}\\nAnswer:"
(plain text, no chat template, as the knowledge-handoff recipes read it), once; its cache is read per layer
(``runtime.passes.model_kv``, ``core.cache``), keys with their rotary removed (``core.rotary.Rotary.remove``: the
position-free keys, so that names of different lengths put no position into the features), keys and values of
every KV head concatenated. Two poolings over the question's own tokens (the character span of the question in the
prompt, found by the tokenizer's offsets), reported side by side:
  - ``last``: the question's last token ("?"), which has attended to the whole question, the name included;
  - ``mean``: the mean over the question's tokens, which also holds the name's own positions, where facts about a
    subject are recalled in causal LMs (its last token), but dilutes them with the template words.
And two past the question: ``prompt_end``, the prompt's last token (":" of "Answer:"), where the model predicts the
answer, and ``fused_end``, the token before it ("Answer"), the last position a fuser writes: C2C fuses the prompt
minus its last token, which the receiver runs unfused over the fused cache (as the paper does), so the answer
must be readable at the question's tokens or at ``fused_end`` for a fuser to carry it.
The classifier is closed-form ridge regression onto one-hot answer values (every value of every attribute seen in
fitting, float64, features standardised on the fitting set; the penalty chosen on ``--dev-set`` people from a grid),
fitted on ``--train-set`` people's questions and scored on ``--test-set`` people's: a prediction is the
highest-scoring value among the question's attribute's values (``accuracy``, chance 1 / values of the attribute),
and among the question's own choices (``choice_accuracy``, chance 1 / choices, comparable with cloze accuracy).
Only the seen value pool can be probed (a value never fitted has no class), so the test set is ``held_out``.
Writes OUT/probe.json (per model, per layer and pooling: accuracies, Wilson intervals, the penalty; chance),
OUT/probe.md (the table) and OUT/probe.png (accuracy against relative depth, one line per model and pooling).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from c2c.core.models import LoadedModel, load_model
from c2c.core.rotary import Rotary
from c2c.core.stats import wilson
from c2c.core.tensors import pad_rows, position_ids, row_mask
from c2c.data import MCItem, load_benchmark
from c2c.evaluation.scorers import item_prompt
from c2c.inputs.align import as_messages, render
from c2c.runtime.passes import model_kv

POOLS = ("last", "mean", "fused_end", "prompt_end")
PENALTIES = [10.0 ** e for e in range(-2, 5)]  # ridge penalties tried on the dev set, times the fitting rows


# ------------------------------------------------------------------------------------------------ features
def question_columns(tokenizer, item: MCItem) -> tuple[list[int], list[int]]:
    """(the prompt's token ids, the indices of the tokens that overlap the question's characters)."""
    view = render(tokenizer, as_messages(item_prompt(item, "cloze")), chat=False)
    start = view.text.find(item.question)
    if start < 0:
        raise ValueError(f"question of {item.id} not found in its prompt {view.text!r}")
    stop = start + len(item.question)
    columns = [t for t, (a, b) in enumerate(view.offsets) if b > a and a < stop and b > start]
    if not columns:
        raise ValueError(f"no token of {item.id}'s question in its prompt")
    return view.ids, columns


@torch.no_grad()
def question_features(model: LoadedModel, items: list[MCItem], batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Per pooling, (layers, items, features): the keys (rotary removed) and values of every KV head at the question's
    tokens, pooled ``last`` and ``mean``, at the last position a fuser writes (``fused_end``) and at the prompt's last
    token (``prompt_end``); float32 on the CPU."""
    rotary, device = Rotary(model.model), model.model.device
    pad = model.tokenizer.pad_token_id or 0
    out: dict[str, list[torch.Tensor]] = {pool: [] for pool in POOLS}
    for begin in range(0, len(items), batch_size):
        rows, columns = zip(*(question_columns(model.tokenizer, item) for item in items[begin:begin + batch_size]))
        ids = pad_rows(rows, pad, left=True).to(device)
        mask = row_mask(rows, left=True).to(device)
        positions = position_ids(mask)
        width = ids.shape[1]
        select = torch.zeros(len(rows), width, device=device)  # (B, N) weights of the question's tokens
        last = torch.zeros(len(rows), dtype=torch.long, device=device)
        for b, (row, cols) in enumerate(zip(rows, columns)):
            shift = width - len(row)
            select[b, [shift + c for c in cols]] = 1 / len(cols)
            last[b] = shift + cols[-1]
        per_layer = {pool: [] for pool in POOLS}
        for layer, (keys, values) in enumerate(model_kv(model.model, ids, mask)):
            keys = rotary.remove(keys, layer, positions)
            both = torch.cat([keys, values], dim=-1).float().transpose(1, 2).flatten(2)  # (B, N, H * 2d)
            per_layer["mean"].append(torch.einsum("bn,bnf->bf", select, both))
            per_layer["last"].append(both[torch.arange(len(rows), device=device), last])
            per_layer["fused_end"].append(both[:, -2])  # left padding: every prompt ends in the last column
            per_layer["prompt_end"].append(both[:, -1])
        for pool in POOLS:
            out[pool].append(torch.stack(per_layer[pool]).cpu())  # (L, B, F)
    return {pool: torch.cat(chunks, dim=1) for pool, chunks in out.items()}


# ------------------------------------------------------------------------------------------------ the probe
def label_space(items: list[MCItem]) -> list[tuple[str, str]]:
    """Every (attribute, value) that answers a fitting question: the probe's classes."""
    return sorted({(item.subject, item.choices[item.answer]) for item in items})


def ridge(features: torch.Tensor, targets: torch.Tensor, penalty: float) -> tuple[torch.Tensor, torch.Tensor,
                                                                                    torch.Tensor, torch.Tensor]:
    """Closed-form ridge of ``targets`` (n, C) on standardised ``features`` (n, F), float64: (mean, scale, W, bias)."""
    x = features.double()
    mean, scale = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / scale
    y = targets.double()
    bias = y.mean(0)
    gram = x.T @ x + penalty * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.solve(gram, x.T @ (y - bias))
    return mean, scale, weights, bias


def predict(fitted, features: torch.Tensor) -> torch.Tensor:
    mean, scale, weights, bias = fitted
    return ((features.double() - mean) / scale) @ weights + bias


def accuracies(scores: torch.Tensor, items: list[MCItem], classes: list[tuple[str, str]]) -> dict:
    """Among the attribute's values, and among the question's own choices (values never fitted score -inf)."""
    index = {c: i for i, c in enumerate(classes)}
    right = right_choice = 0
    for row, item in zip(scores, items):
        mine = [i for i, (attribute, _) in enumerate(classes) if attribute == item.subject]
        right += int(classes[mine[int(row[mine].argmax())]][1] == item.choices[item.answer])
        choice_scores = [float(row[index[(item.subject, c)]]) if (item.subject, c) in index else -float("inf")
                         for c in item.choices]
        right_choice += int(max(range(len(item.choices)), key=choice_scores.__getitem__) == item.answer)
    n = len(items)
    return {"accuracy": round(right / n, 4), "ci95": wilson(right, n),
            "choice_accuracy": round(right_choice / n, 4), "choice_ci95": wilson(right_choice, n)}


def chance(items: list[MCItem], classes: list[tuple[str, str]]) -> dict:
    values = {a: sum(1 for c in classes if c[0] == a) for a, _ in classes}
    return {"accuracy": round(sum(1 / values[i.subject] for i in items) / len(items), 4),
            "choice_accuracy": round(sum(1 / len(i.choices) for i in items) / len(items), 4)}


def probe_layer(train: torch.Tensor, train_items: list[MCItem], test: torch.Tensor, test_items: list[MCItem],
                dev: torch.Tensor | None = None, dev_items: list[MCItem] | None = None) -> dict:
    """Fit on (train, train_items), choose the penalty on the dev set (else the middle of the grid), score on test."""
    classes = label_space(train_items)
    index = {c: i for i, c in enumerate(classes)}
    targets = torch.zeros(len(train_items), len(classes))
    for row, item in enumerate(train_items):
        targets[row, index[(item.subject, item.choices[item.answer])]] = 1
    penalty = PENALTIES[len(PENALTIES) // 2]
    if dev is not None and dev_items:
        scored = [(accuracies(predict(ridge(train, targets, p), dev), dev_items, classes)["accuracy"], p)
                  for p in PENALTIES]
        penalty = max(scored)[1]  # the best dev accuracy; on ties the strongest penalty
    return {**accuracies(predict(ridge(train, targets, penalty), test), test_items, classes), "penalty": penalty}


def probe_model(model: LoadedModel, train_items, test_items, dev_items=None, batch_size: int = 16) -> dict:
    began = time.time()
    train, test = question_features(model, train_items, batch_size), question_features(model, test_items, batch_size)
    dev = question_features(model, dev_items, batch_size) if dev_items else None
    layers = []
    for layer in range(train[POOLS[0]].shape[0]):
        layers.append({"layer": layer, **{pool: probe_layer(train[pool][layer], train_items, test[pool][layer],
                                                            test_items, dev[pool][layer] if dev else None, dev_items)
                                          for pool in POOLS}})
    return {"spec": model.name, "layers": layers, "features": int(train[POOLS[0]].shape[-1]),
            "seconds": round(time.time() - began, 1)}


# ------------------------------------------------------------------------------------------------ reports
def table(result: dict) -> str:
    lines = [f"Linear probe on each layer's K/V at the question's tokens: fitted on {result['train_set']} "
             f"({result['n_train']} questions), scored on {result['test_set']} ({result['n_test']}). Accuracy among "
             f"the attribute's values (chance {result['chance']['accuracy']:.3f}) and among the question's choices "
             f"(chance {result['chance']['choice_accuracy']:.3f}).", ""]
    for label, model in result["models"].items():
        lines += [f"### {label} ({model['spec']})", "",
                  "| layer | " + " | ".join(f"{pool} | {pool}, choices" for pool in POOLS) + " |",
                  "|---:|" + "---:|---:|" * len(POOLS)]
        for row in model["layers"]:
            lines.append(f"| {row['layer']} | " + " | ".join(
                f"{row[pool]['accuracy']:.3f} | {row[pool]['choice_accuracy']:.3f}" for pool in POOLS) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axis = plt.subplots(figsize=(7, 4))
    for label, model in result["models"].items():
        count = len(model["layers"])
        depth = [row["layer"] / max(count - 1, 1) for row in model["layers"]]
        for pool, style in zip(POOLS, ("-", "--", "-.", ":")):
            axis.plot(depth, [row[pool]["accuracy"] for row in model["layers"]], style, marker="o", markersize=3,
                      label=f"{label}, {pool} ({count} layers)")
    axis.axhline(result["chance"]["accuracy"], color="grey", linestyle=":", label="chance")
    axis.set_xlabel("layer (relative depth)")
    axis.set_ylabel(f"accuracy on {result['test_set']}")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8)
    axis.set_title("Is the answer linearly readable from each layer's K/V?")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="LABEL=SPEC",
                        help="a model to probe (repeatable): the merged sharer folder, a receiver spec")
    parser.add_argument("--encyclopedia", default="runs/knowledge_handoff/encyclopedia")
    parser.add_argument("--train-set", default="fuser_train")
    parser.add_argument("--dev-set", default="dev", help="chooses the penalty; 'none' for the fixed middle one")
    parser.add_argument("--test-set", default="held_out")
    parser.add_argument("--limit-train", type=int, help="a seeded sample of N fitting questions")
    parser.add_argument("--limit-test", type=int, help="a seeded sample of N test questions")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/knowledge_handoff/probe", help="folder for probe.json/.md/.png")
    args = parser.parse_args(argv)
    folder = Path(args.encyclopedia)

    def items(name: str, limit: int | None) -> list[MCItem]:
        return load_benchmark(str(folder / f"{name}.jsonl"), limit=limit).items
    train_items, test_items = items(args.train_set, args.limit_train), items(args.test_set, args.limit_test)
    dev_items = None if args.dev_set == "none" else items(args.dev_set, None)
    classes = label_space(train_items)
    missing = {(i.subject, i.choices[i.answer]) for i in test_items} - set(classes)
    if missing:
        raise SystemExit(f"{args.test_set} has answers no {args.train_set} question has ({len(missing)}, e.g. "
                         f"{sorted(missing)[0]}): a probe has no class for them; test on held_out")
    result = {"encyclopedia": str(folder), "train_set": args.train_set, "dev_set": args.dev_set,
              "test_set": args.test_set, "n_train": len(train_items), "n_test": len(test_items),
              "positions": "the question's tokens: last (its last token) and mean (over them); prompt_end: the "
                           "prompt's last token, where the answer is predicted; fused_end: the one before it, the "
                           "last position a fuser writes",
              "features": "keys (rotary removed) and values of every KV head, concatenated",
              "classifier": "ridge onto one-hot answer values, penalty chosen on the dev set",
              "chance": chance(test_items, classes), "models": {}}
    for spec in args.model:
        label, _, name = spec.partition("=")
        if not name:
            label, name = Path(spec).name, spec
        model = load_model(name, args.dtype, args.device)
        result["models"][label] = probe_model(model, train_items, test_items, dev_items, args.batch_size)
        for pool in POOLS:
            best = max(result["models"][label]["layers"], key=lambda r: r[pool]["accuracy"])
            print(f"{label}: {pool} best at layer {best['layer']}: {best[pool]['accuracy']:.3f}", file=sys.stderr)
        del model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "probe.md").write_text(table(result) + "\n")
    plot(result, out / "probe.png")
    print(table(result))
    return result


if __name__ == "__main__":
    main()
