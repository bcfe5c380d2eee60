"""Choose the free-text scoring's answer prompt, token budget and answer extraction on SQuAD dev articles
(results/context_handoff/squad_prompt_choice.md).

`run PROMPT` evaluates the receiver alone and the receiver reading the paragraph (`c2c eval --scoring free`, the
same 100 seeded dev questions, 32 greedy tokens) with one candidate prompt; `table` re-reads the generated texts
of every run with each candidate extraction and with shorter budgets (the first N tokens of the same greedy
answer are the answer under an N-token budget), and writes the table. One run per prompt gives all its rows.

    C2C_DATA_DIR=../shared/data OMP_NUM_THREADS=1 python benchmarks/squad_prompt_choice.py run cloze
    python benchmarks/squad_prompt_choice.py table
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

from c2c.core.runlog import read_jsonl
from c2c.evaluation.answers import extract_answer, free_text_scores

OUT = Path(__file__).resolve().parents[1] / "results" / "context_handoff" / "squad_prompt_choice"
BENCH, METHODS, BUDGET = "squad:dev:100", ("receiver", "receiver-with-context"), 32
# name -> (prompt after the context, the receiver's chat template)
PROMPTS = {
    "cloze": ("Question: {question}\nAnswer:", False),
    "instruct": ("Answer the question with a short phrase from the context.\nQuestion: {question}\nAnswer:", False),
    "one-shot": ("Question: What is the capital city of France?\nAnswer: Paris\n\nQuestion: {question}\nAnswer:", False),
}


EXTRACTIONS = {"first line": lambda text, question: next((x.strip() for x in text.splitlines() if x.strip()), ""),
               # c2c.evaluation.answers.extract_answer without the question: no restatement to cut
               "first sentence, no \"The answer is:\"": lambda text, question: extract_answer(text),
               "the same, restatement cut (extract_answer)": extract_answer}


def folder(prompt: str) -> Path:
    return OUT / re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")


def run(prompt: str) -> None:
    import c2c.data.prompts
    from c2c.evaluation.evaluate import EvalConfig, EvalSetup, run_eval
    from c2c.core.names import DEFAULT_RECEIVER, DEFAULT_SHARER
    from c2c.model.pair import C2CModel

    template, chat = PROMPTS[prompt]
    c2c.data.prompts.FREE_PROMPT = template
    # the shipped translator's pair reads raw text; with the chat template, the untrained pair as `c2c eval` makes
    # it without --fuser (receiver and receiver-with-context run no fuser)
    pair = C2CModel.create(DEFAULT_RECEIVER, [DEFAULT_SHARER], chat_template=True) if chat else \
        C2CModel.from_pretrained("fusers/context_handoff")
    run_eval(EvalConfig([BENCH], list(METHODS), scoring="free", out=str(folder(prompt))),
             EvalSetup(pair, fused=not chat, max_new_tokens=BUDGET))


def table() -> str:
    from transformers import AutoTokenizer

    from c2c.data import load_benchmark
    from c2c.core.models import resolve
    from c2c.core.names import DEFAULT_RECEIVER

    tokenizer = AutoTokenizer.from_pretrained(resolve(DEFAULT_RECEIVER))
    name, split, limit = BENCH.split(":")
    items = {i.id: i for i in load_benchmark(name, split, limit=int(limit)).items}
    lines = [f"SQuAD dev articles, {limit} seeded questions (`{BENCH}`), default pair's receiver (SmolLM2-135M-"
             "Instruct), greedy. F1 of each method, exact match and answer recall of receiver-with-context, in % "
             "(F1 95% CI: normal approximation); gap = F1 with the paragraph - F1 alone.", "",
             "| prompt | budget | extraction | receiver F1 | receiver-with-context F1 [95% CI] | EM | recall | gap |",
             "|---|---|---|---|---|---|---|---|"]
    for prompt in PROMPTS:
        if not (folder(prompt) / "squad").is_dir():
            continue
        texts = {m: read_jsonl(folder(prompt) / "squad" / f"{m}.jsonl") for m in METHODS}
        for budget in (16, 24, 32):
            for extraction, extract in EXTRACTIONS.items():
                scores = {}
                for method, records in texts.items():
                    cut = [tokenizer.decode(tokenizer(r["text"], add_special_tokens=False)["input_ids"][:budget])
                           for r in records]
                    scores[method] = [free_text_scores(extract(text, items[r["id"]].question), r["gold"])
                                      for text, r in zip(cut, records)]
                alone, read = ([s["f1"] for s in scores[m]] for m in METHODS)
                mean, half = statistics.fmean(read), 1.96 * statistics.stdev(read) / len(read) ** 0.5
                em = statistics.fmean(s["exact_match"] for s in scores[METHODS[1]])
                recall = statistics.fmean(s["recall"] for s in scores[METHODS[1]])
                lines.append(f"| {prompt} | {budget} | {extraction} | {100 * statistics.fmean(alone):.1f} | "
                             f"{100 * mean:.1f} [{100 * (mean - half):.1f}, {100 * (mean + half):.1f}] | "
                             f"{100 * em:.1f} | {100 * recall:.1f} | "
                             f"{100 * (mean - statistics.fmean(alone)):+.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["run", "table"])
    parser.add_argument("prompt", nargs="?", choices=list(PROMPTS))
    args = parser.parse_args()
    if args.step == "run":
        run(args.prompt)
    else:
        print(table())
