"""The main job on the default pair: receiver, sharer and C2C side by side on a few real questions.

Loads the shipped fuser (fusers/default_pair: SmolLM2-135M-Instruct <- Gemma-3-270m, trained with
recipes/default_pair_choices.yaml), scores seeded ARC-Challenge test questions with the protocol it was trained
for (cloze: the question alone, each choice ranked by its likelihood) for each method (the same code as
`c2c eval`), then answers one of them in free text with the instruction-data fuser (fusers/default_pair_chat,
recipes/default_pair_instruct.yaml), the one behind `c2c generate` and `c2c chat`.

    python examples/side_by_side.py [--fuser DIR] [--chat-fuser DIR] [--questions N] [--seed S] [--scoring cloze]
"""

import argparse
import time
from pathlib import Path

from c2c.data import load_benchmark, mc_prompt
from c2c.evaluate import EvalSetup, method_runner
from c2c.pair import C2CModel

FUSERS = Path(__file__).resolve().parents[1] / "fusers"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fuser", default=str(FUSERS / "default_pair"))
    parser.add_argument("--chat-fuser", default=str(FUSERS / "default_pair_chat"))
    parser.add_argument("--questions", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scoring", default="cloze", choices=["cloze", "cloze-options"])
    args = parser.parse_args()
    print(f"loading the pair and the fuser from {args.fuser} (the first run converts the GGUF weights once)")
    pair = C2CModel.from_pretrained(args.fuser)
    open_layers = [layer for layer, (k, v) in enumerate(pair.gate_logits()[0].tolist()) if k > 0 or v > 0]
    print(f"fuser gates open on receiver layers {open_layers}")
    items = load_benchmark("arc-challenge", "test", limit=args.questions, seed=args.seed).items
    setup = EvalSetup(pair, pair.receiver, pair.sharers[0], chat=pair.config.chat_template)
    methods = ["receiver", "sharer", "c2c", "c2c-shuffled"]
    runners = {m: method_runner(m, setup, items, args.scoring, args.seed) for m in methods}
    correct = dict.fromkeys(methods, 0)
    for item in items:
        print("\n" + mc_prompt(item, "cloze-options") + f" (gold: {item.letters[item.answer]})")
        for method in methods:
            started = time.perf_counter()
            prediction = runners[method](item)["prediction"]
            correct[method] += prediction == item.answer
            mark = "right" if prediction == item.answer else "wrong"
            print(f"  {method:>13}: {item.letters[prediction]} ({mark}, {1000 * (time.perf_counter() - started):.0f} ms)")
    print("\ncorrect: " + ", ".join(f"{m} {correct[m]}/{len(items)}" for m in methods))
    print("(c2c-shuffled: the sharer reads a different question; what C2C gains over it is communication)")
    chat = C2CModel.from_pretrained(args.chat_fuser, receiver=pair.receiver, sharers=pair.sharers)
    print(f"\nFree text from {args.chat_fuser} (the receiver's chat template), first question:")
    for fuse in (False, True):
        text = chat.generate(items[0].question, max_new_tokens=48, fuse=fuse)[0]
        print(f"\n{'C2C' if fuse else 'receiver alone'}: {text.strip()!r}")
    print("\nFull tables: results/default_pair/ (see its README for the commands).")


if __name__ == "__main__":
    main()
