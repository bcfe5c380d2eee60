"""The main job on the default pair: receiver, sharer and C2C side by side on a few real questions.

Loads the shipped fuser (fusers/default_pair: SmolLM2-135M-Instruct <- Gemma-3-270m, trained with
recipes/default_pair_choices.yaml), scores seeded ARC-Challenge test questions with the protocol it was trained
for (cloze: the question alone, each choice ranked by its likelihood) for each method (the same code as
`c2c eval`), then answers one of them in free text with the instruction-data fuser (fusers/default_pair_chat,
recipes/default_pair_instruct.yaml), the one behind `c2c generate` and `c2c chat`. Last, the context handoff in
free text (fusers/context_handoff): SQuAD questions answered by the receiver alone, by the receiver reading the
paragraph, and by the receiver from the paragraph that only the sharer read, translated into its cache.

The questions come from examples/data/arc_challenge_demo.jsonl (50 ARC-Challenge test questions shipped with
the project) and examples/data/squad_demo.json (four SQuAD v1.1 paragraphs of test articles; see
examples/data/README.md for both), so the demo runs offline on a fresh clone: the first N of that file,
which are the seeded sample load_benchmark("arc-challenge", "test", limit=N, seed=1) for the default N=5.
--bench NAME asks a seeded sample of a full benchmark instead (from --data-dir, else $C2C_DATA_DIR, else the hub).

    python examples/side_by_side.py [--fuser DIR] [--chat-fuser DIR] [--questions N] [--seed S] [--scoring cloze]
                                    [--bench arc-challenge [--split test] [--data-dir DIR]] [--handoff DIR]
"""

import argparse
import time
from pathlib import Path

from c2c.evaluation.answers import extract_answer, f1
from c2c.inputs.context import with_context
from c2c.data import free_prompt, load_benchmark, mc_prompt
from c2c.evaluation.evaluate import EvalSetup, method_runner
from c2c.core.names import FREE_MAX_NEW_TOKENS
from c2c.model.pair import C2CModel

FUSERS = Path(__file__).resolve().parents[1] / "fusers"
DEMO_QUESTIONS = Path(__file__).resolve().parent / "data" / "arc_challenge_demo.jsonl"
DEMO_PARAGRAPHS = Path(__file__).resolve().parent / "data" / "squad_demo.json"
# three questions with short factual answers, one per paragraph (chosen before seeing any model's answer)
HANDOFF_QUESTIONS = ("University_of_Chicago-33-1", "Islamism-14-1", "Computational_complexity_theory-45-0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fuser", default=str(FUSERS / "default_pair"))
    parser.add_argument("--chat-fuser", default=str(FUSERS / "default_pair_chat"))
    parser.add_argument("--questions", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1, help="the c2c-shuffled control's partners (and the sample, "
                                                              "with --bench)")
    parser.add_argument("--scoring", default="cloze", choices=["cloze", "cloze-options"])
    parser.add_argument("--bench", help="a seeded sample of this benchmark (e.g. arc-challenge) instead of the "
                                        "shipped questions")
    parser.add_argument("--split", default="test", help="with --bench")
    parser.add_argument("--data-dir", help="with --bench: the data dir (default $C2C_DATA_DIR, else the hub)")
    parser.add_argument("--handoff", default=str(FUSERS / "context_handoff"), help="the context translator")
    args = parser.parse_args()
    if args.bench:
        items = load_benchmark(args.bench, args.split, args.data_dir, limit=args.questions, seed=args.seed).items
    else:  # its lines are in the order the demo asks them (examples/data/README.md)
        items = load_benchmark(str(DEMO_QUESTIONS)).items[: args.questions]
        if len(items) < args.questions:
            parser.error(f"{DEMO_QUESTIONS} holds {len(items)} questions; use --bench for more")
    print(f"loading the pair and the fuser from {args.fuser} (the first run converts the GGUF weights once)")
    pair = C2CModel.from_pretrained(args.fuser)
    open_layers = pair.open_gates()[0].any(-1).nonzero()[:, 0].tolist()
    print(f"fuser gates open on receiver layers {open_layers}")
    setup = EvalSetup(pair)
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
    handoff(C2CModel.from_pretrained(args.handoff, receiver=pair.receiver, sharers=pair.sharers), args.handoff)
    print("\nFull tables: results/default_pair/ and results/context_handoff/ (see their READMEs for the commands).")


def handoff(pair: C2CModel, path: str) -> None:
    """SQuAD questions in free text: the receiver alone, reading the paragraph, and from the sharer's reading."""
    items = {item.id: item for item in load_benchmark(str(DEMO_PARAGRAPHS)).items}
    print(f"\nContext handoff with {path}: the sharer reads a SQuAD paragraph, the receiver answers the question "
          "from what the translator wrote into its cache (the short answer read from its greedy text, F1 against "
          "the references)")
    ways = {"receiver alone": lambda prompt, paragraph: pair.generate(prompt, max_new_tokens=FREE_MAX_NEW_TOKENS,
                                                                       fuse=False),
            "receiver reading the paragraph": lambda prompt, paragraph: pair.generate(
                with_context(prompt, paragraph), max_new_tokens=FREE_MAX_NEW_TOKENS, fuse=False),
            "from the sharer's reading": lambda prompt, paragraph: pair.generate(
                prompt, sharer_contexts=paragraph, max_new_tokens=FREE_MAX_NEW_TOKENS)}
    for item in map(items.get, HANDOFF_QUESTIONS):
        print(f"\n{item.title.replace('_', ' ')}: {item.context[:100]}...\nQ: {item.question} "
              f"(reference: {' / '.join(item.references)})")
        for way, answer in ways.items():
            started = time.perf_counter()
            short = extract_answer(answer(free_prompt(item), item.context)[0], item.question)
            print(f"  {way:>30}: {short!r} (F1 {100 * f1(short, item.references):.0f}, "
                  f"{1000 * (time.perf_counter() - started):.0f} ms)")


if __name__ == "__main__":
    main()
