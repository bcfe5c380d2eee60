"""Training curves and learned gates of a C2C run (and its LoRA baseline), from their metrics.jsonl logs.

    python benchmarks/training_report.py --c2c runs/default_pair_mc --lora runs/default_pair_mc_lora \
        --out results/default_pair/training
writes training.json (curves, final gate logits per receiver layer, open layers, minutes) and training.png.
The held-out baseline (the receiver alone) is the run's step-0 evaluation; runs logged before c2c evaluated
step 0 get it computed here with --baseline (loads the pair; a minute or two on the default pair).
--shuffled-control adds the held-out objective with each sharer reading another held-out prompt.
"""

import argparse
import json
import sys
from pathlib import Path

from c2c.model.pair import C2CModel
from c2c.training.distributed import Runtime
from c2c.training.recipe import TrainConfig
from c2c.core.runlog import read_metrics, training_minutes
from c2c.training.train import build_model, evaluate_held_out, load_examples


def curves(run: Path) -> dict:
    records = read_metrics(run)
    steps = [r for r in records if "loss" in r]
    return {"run": str(run), "minutes": training_minutes(run),
            "steps": [r["step"] for r in steps], "loss": [r["loss"] for r in steps],
            "eval_steps": [r["step"] for r in records if "eval_loss" in r],
            "eval_loss": [r["eval_loss"] for r in records if "eval_loss" in r],
            "eval_accuracy": [r["eval_accuracy"] for r in records if "eval_accuracy" in r],
            "eval_sharer_agreement": [r["eval_sharer_agreement"] for r in records if "eval_sharer_agreement" in r],
            "gate_logits": steps[-1].get("gate_logits"), "gates_open_history": [r.get("gates_open") for r in steps],
            "sharer_cache": next((r for r in records if r.get("event") == "sharer_cache"), None)}


def held_out_baseline(run: Path, compute: bool) -> dict | None:
    """Held-out loss (and accuracy) of the receiver alone on the run's own held-out slice."""
    logged = next((r for r in read_metrics(run) if r.get("step") == 0 and "eval_loss" in r), None)
    if logged or not compute:
        return logged
    config, held_out = _held_out(run)
    pair, trainable = build_model(config)
    return {"step": 0, **evaluate_held_out(pair, trainable, held_out, config, Runtime(), fuse=False)}


def shuffled_control(run: Path) -> dict:
    """The trained fuser on its held-out slice as trained and with each sharer reading another example."""
    config, held_out = _held_out(run)
    pair = C2CModel.from_pretrained(run)
    return {name: evaluate_held_out(pair, pair.fusers, held_out, config, Runtime(), shuffled=shuffled)
            for name, shuffled in (("c2c", False), ("c2c-shuffled", True))}


def _held_out(run: Path):
    config = TrainConfig.from_dict(json.loads((run / "train_config.json").read_text()))
    return config, load_examples(config)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--c2c", required=True)
    parser.add_argument("--lora")
    parser.add_argument("--out", required=True, help="output path without extension")
    parser.add_argument("--baseline", action="store_true", help="compute the receiver-alone held-out baseline "
                                                                 "when the run did not log it at step 0")
    parser.add_argument("--shuffled-control", action="store_true",
                        help="also evaluate the trained fuser on the held-out slice with each sharer reading "
                             "another example's prompt: the communication control of the training objective")
    args = parser.parse_args()
    report = {"command": "python " + " ".join(sys.argv), "c2c": curves(Path(args.c2c)),
              "receiver_alone_held_out": held_out_baseline(Path(args.c2c), args.baseline)}
    if args.shuffled_control:
        report["held_out_control"] = shuffled_control(Path(args.c2c))
    if args.lora:
        report["lora"] = curves(Path(args.lora))
    gates = report["c2c"]["gate_logits"]
    report["open_layers"] = {"key": [layer for layer, (k, _) in enumerate(gates) if k > 0],
                             "value": [layer for layer, (_, v) in enumerate(gates) if v > 0]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, (losses, gate_plot) = plt.subplots(1, 2, figsize=(12, 4))
    for name in ("c2c", "lora"):
        if name in report:
            run = report[name]
            losses.plot(run["steps"], run["loss"], alpha=0.5, label=f"{name} train")
            losses.plot(run["eval_steps"], run["eval_loss"], marker="o", label=f"{name} held-out")
    if report["receiver_alone_held_out"]:
        losses.axhline(report["receiver_alone_held_out"]["eval_loss"], color="gray", linestyle="--",
                       label="receiver alone, held-out")
    config = json.loads((Path(args.c2c) / "train_config.json").read_text())
    ylabel = "choice cross-entropy (per item)" if config.get("objective") == "choices" else \
        "cross-entropy (response tokens)"
    if config.get("distill_weight"):  # train: against the sharer-mixed target; held-out: the right answer's
        ylabel += "\ntrain: distillation target; held-out: right answer"
    losses.set(xlabel="optimizer step", ylabel=ylabel, title="training curves")
    losses.legend()
    layers = range(len(gates))
    gate_plot.bar([l - 0.2 for l in layers], [k for k, _ in gates], width=0.4, label="key gate")
    gate_plot.bar([l + 0.2 for l in layers], [v for _, v in gates], width=0.4, label="value gate")
    gate_plot.axhline(0, color="black", linewidth=0.8)
    gate_plot.set(xlabel="receiver layer", ylabel="gate logit (open if > 0)", title="learned gates after training")
    gate_plot.legend()
    figure.tight_layout()
    figure.savefig(out.with_suffix(".png"), dpi=120)
    print(json.dumps({k: v for k, v in report.items() if k in ("open_layers", "command")}, indent=1))


if __name__ == "__main__":
    main()
