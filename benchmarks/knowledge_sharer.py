"""A sharer that knows what the receiver does not (issue 34): the fictional encyclopedia of ``c2c.data.encyclopedia``
learnt by a causal LM with LoRA and merged into a local model folder that ``c2c`` loads like any other.

    python benchmarks/knowledge_sharer.py build [--out runs/knowledge_handoff] [--model gemma3-270m] [--epochs 4]
        [--r 16 --alpha 32 --lr 1e-3 --batch-size 32 --max-steps N --save-every 100] [--resume] [--stop-after N]
    python benchmarks/knowledge_sharer.py probe --model runs/knowledge_handoff/sharer [--limit 200]
        [--encyclopedia runs/knowledge_handoff/encyclopedia] [--out runs/knowledge_handoff/probe_sharer.json]

``build`` writes OUT/encyclopedia/ (the corpus and the question files: ``c2c.data.encyclopedia.write_encyclopedia``;
an existing one with the same settings is kept), fine-tunes ``--model`` (loaded by ``c2c.core.models.load_model``,
so a built-in name is read from its local GGUF package, offline) with a LoRA adapter on every linear layer, by a
causal-LM loss on the corpus texts whose softmax runs over the corpus's own tokens (``CorpusHead``: a few thousand
of Gemma's 262,144, so the LM head stops costing more than the model; the ranking among corpus tokens, every cloze
choice's first token included, is trained as a full softmax would train it) with the body under bf16 autocast
(``--autocast``; about 3x faster than the full head in float32 on this CPU), with the schedule and batch order of
``c2c train`` (``training.train.lr_factor``, ``Order``), saving its resumable state every ``--save-every`` steps as ``c2c train`` does (``training.state``: the
adapter's weights, optimizer, schedule and random state in OUT/sharer_lora/checkpoint/, the settings beside it;
``--resume`` continues from there: the batches of a step depend only on the seed and the step, so a resumed run takes
the same steps as an uninterrupted one), writes the trained adapter to OUT/sharer_lora/adapter/, then merges it
(``merge_and_unload``) and saves the merged model and its tokenizer as safetensors in OUT/sharer/ (with
``knowledge_sharer.json``: the settings, the corpus loss before and after, and the largest logit difference
between the merged model and the adapter on top of the base model). The merged sharer is a build product: never
commit it. ``--stop-after N`` stops after N steps of this call (with a checkpoint), as an interruption would.

``probe`` is a model's cloze accuracy (``c2c.evaluation.scorers``: the same prompt "Question: ...\\nAnswer:" and
per-character log-likelihood ranking as ``c2c eval --scoring cloze``, with the model's own prompt rendering off, as
the knowledge-handoff recipes read it) on each person set's questions, with Wilson intervals and chance.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

from c2c.core.models import LoadedModel, load_model
from c2c.core.runlog import append_jsonl, atomic_write
from c2c.core.stats import wilson
from c2c.core.tensors import pad_rows, row_mask
from c2c.data import load_benchmark
from c2c.data.encyclopedia import DEFAULT_CHOICES, DEFAULT_SIZES, PERSON_SETS, write_encyclopedia
from c2c.evaluation.scorers import ModelScorer, item_prompt, score_items
from c2c.training.state import load_trainer_state, save_trainer_state
from c2c.training.train import Order, lr_factor

LOSS_SAMPLE = 64  # corpus texts whose mean loss is measured before and after training
MERGE_SAMPLE = 8  # corpus texts on which the merged model's logits are compared with the adapter's


# ------------------------------------------------------------------------------------------------ encyclopedia
def encyclopedia_files(folder: Path, seed: int, sizes: dict[str, int], choices: int) -> Path:
    """``folder`` holding the encyclopedia for these settings: kept when its manifest matches, else (re)written."""
    manifest = folder / "manifest.json"
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if (found.get("seed"), found.get("sizes"), found.get("choices")) == (seed, sizes, choices):
            return folder
        print(f"{folder}: written with other settings; rewriting it", file=sys.stderr)
    write_encyclopedia(folder, seed, sizes, choices)
    return folder


def corpus_texts(folder: Path) -> list[str]:
    return [json.loads(line)["text"] for line in (folder / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------------ LoRA training
def text_batch(tokenizer, texts: list[str], max_length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token rows of ``texts`` (with the tokenizer's own special tokens, e.g. Gemma's BOS) and mask."""
    rows = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = pad_rows(rows, pad, left=False).to(device)
    mask = row_mask(rows, left=False).to(device)
    return ids, mask


def lm_loss(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the texts' tokens (padding ignored)."""
    return model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss


class CorpusHead:
    """The training loss with the softmax restricted to the tokens the corpus uses: the causal LM's body gives hidden
    states, and only the LM head's rows of those tokens are applied. Every target is a corpus token, so the loss
    still trains the ranking among them (what the cloze probe reads) at a small fraction of the full head's cost."""

    def __init__(self, causal_lm, tokenizer, texts: list[str], max_length: int):
        rows = {t for text in texts for t in tokenizer(text, truncation=True, max_length=max_length)["input_ids"]}
        self.vocab = torch.tensor(sorted(rows))  # (V,) corpus token ids
        self.position = torch.full((causal_lm.config.vocab_size,), -100, dtype=torch.long)
        self.position[self.vocab] = torch.arange(len(self.vocab))  # full id -> row of the restricted head, or -100
        self.body = getattr(causal_lm, causal_lm.base_model_prefix)
        self.head = causal_lm.get_output_embeddings()
        self.softcap = getattr(causal_lm.config, "final_logit_softcapping", None)

    def loss(self, ids: torch.Tensor, mask: torch.Tensor, autocast: torch.dtype | None = None) -> torch.Tensor:
        with torch.autocast(ids.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            hidden = self.body(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]  # (B, N-1, D)
        weight = self.head.weight[self.vocab.to(ids.device)]  # (V, D)
        logits = hidden.float() @ weight.float().T  # (B, N-1, V)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        targets = self.position.to(ids.device)[ids[:, 1:]].masked_fill(mask[:, 1:] == 0, -100)  # (B, N-1)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


@torch.no_grad()
def mean_loss(model, tokenizer, texts: list[str], max_length: int, batch_size: int) -> float:
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(texts), batch_size):
        ids, mask = text_batch(tokenizer, texts[start:start + batch_size], max_length, model.device)
        total += float(lm_loss(model, ids, mask)) * int(mask[:, 1:].sum())
        count += int(mask[:, 1:].sum())
    model.train(was_training)
    return total / max(count, 1)


def train_lora(base: LoadedModel, texts: list[str], out: Path, *, r: int = 16, alpha: float = 32, dropout: float = 0.05,
               lr: float = 1e-3, epochs: float = 4, batch_size: int = 32, max_steps: int | None = None,
               warmup: float = 0.05, save_every: int = 100, log_every: int = 10, max_length: int = 64,
               seed: int = 0, resume: bool = False, stop_after: int | None = None, autocast: str | None = "bfloat16"):
    """LoRA on ``base.model`` (every linear layer but the LM head) by ``CorpusHead``'s loss on ``texts`` (the body
    under ``autocast``, a dtype name, or None for none); checkpoints in
    OUT/sharer_lora/, metrics in OUT/sharer_metrics.jsonl. Returns (the PEFT model, its state: step, total steps,
    the corpus loss before and after, the settings)."""
    from peft import LoraConfig, get_peft_model

    steps_per_epoch = max(1, len(texts) // batch_size)
    total = max_steps or max(1, math.ceil(epochs * steps_per_epoch))
    settings = {"base": base.name, "r": r, "alpha": alpha, "dropout": dropout, "lr": lr, "batch_size": batch_size,
                "total_steps": total, "steps_per_epoch": steps_per_epoch, "warmup": warmup, "max_length": max_length,
                "seed": seed, "texts": len(texts), "loss": "corpus_head", "autocast": autocast}
    folder, metrics = out / "sharer_lora", out / "sharer_metrics.jsonl"
    base.model.requires_grad_(False)
    torch.manual_seed(seed)
    model = get_peft_model(base.model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                                  target_modules="all-linear"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    head = CorpusHead(model.get_base_model(), base.tokenizer, texts, max_length)
    autocast_dtype = getattr(torch, autocast) if autocast else None
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup, "cosine"))
    tokenizer, sample = base.tokenizer, texts[:LOSS_SAMPLE]
    if resume and (folder / "checkpoint" / "trainer_state.json").is_file():
        saved = json.loads((folder / "settings.json").read_text())
        changed = {k: (saved.get(k), v) for k, v in settings.items() if saved.get(k) != v}
        if changed:
            raise SystemExit(f"--resume: {folder} was trained with other settings {changed}; start afresh "
                             "without --resume (or with the checkpoint's settings)")
        start = load_trainer_state(folder / "checkpoint", model, optimizer, scheduler, model.device)
        settings = saved
        print(f"resumed at step {start} of {total}", file=sys.stderr)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        metrics.unlink(missing_ok=True)
        start, settings = 0, {**settings, "loss_before": mean_loss(model, tokenizer, sample, max_length, batch_size)}
        text = json.dumps(settings, indent=1) + "\n"
        atomic_write(folder / "settings.json", lambda path: Path(path).write_text(text))
    order = Order(len(texts), batch_size, seed)
    model.train()
    began, step = time.time(), start
    last = start + stop_after if stop_after is not None else total
    while step < min(total, last):
        ids, mask = text_batch(tokenizer, [texts[i] for i in order.indices(step)], max_length, model.device)
        loss = head.loss(ids, mask, autocast_dtype)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % log_every == 0 or step == total:
            append_jsonl(metrics, [{"step": step, "loss": round(loss.item(), 5), "lr": scheduler.get_last_lr()[0],
                                    "seconds": round(time.time() - began, 2)}])
        if step % save_every == 0 or step in (total, last):
            save_trainer_state(folder, model, optimizer, scheduler, step)
    if step == total:
        model.save_pretrained(folder / "adapter")  # the trained adapter, in peft's own format
    model.eval()
    return model, {**settings, "step": step, "loss_after": mean_loss(model, tokenizer, sample, max_length, batch_size)}


@torch.no_grad()
def merge_and_save(model, tokenizer, texts: list[str], target: Path, info: dict, max_length: int) -> dict:
    """Merge the adapter into the base weights and save model + tokenizer (safetensors) in ``target``, staged and
    swapped in whole; ``info`` gains the largest logit difference, merged against adapter, on a few texts."""
    ids, mask = text_batch(tokenizer, texts[:MERGE_SAMPLE], max_length, model.device)
    model.eval()
    adapted = model(input_ids=ids, attention_mask=mask).logits.float()
    merged = model.merge_and_unload().eval()
    difference = (merged(input_ids=ids, attention_mask=mask).logits.float() - adapted)[mask.bool()].abs().max()
    info = {**info, "merge_max_abs_logit_difference": float(difference)}
    staging = target.with_name(target.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    (staging / "knowledge_sharer.json").write_text(json.dumps(info, indent=1) + "\n")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return info


def build(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {**DEFAULT_SIZES, **dict(parse_size(s) for s in args.people or [])}
    folder = encyclopedia_files(out / "encyclopedia", args.seed, sizes, args.choices)
    texts = corpus_texts(folder)
    base = load_model(args.model, "float32", args.device)
    model, info = train_lora(base, texts, out, r=args.r, alpha=args.alpha, dropout=args.dropout, lr=args.lr,
                             epochs=args.epochs, batch_size=args.batch_size, max_steps=args.max_steps,
                             warmup=args.warmup, save_every=args.save_every, log_every=args.log_every,
                             max_length=args.max_length, seed=args.seed, resume=args.resume,
                             stop_after=args.stop_after, autocast=None if args.autocast == "none" else args.autocast)
    info["encyclopedia"] = str(folder)
    if info["step"] < info["total_steps"]:
        print(f"stopped at step {info['step']} of {info['total_steps']}; continue with --resume", file=sys.stderr)
        return info
    info = merge_and_save(model, base.tokenizer, texts, out / "sharer", info, args.max_length)
    print(json.dumps(info, indent=1))
    return info


def parse_size(text: str) -> tuple[str, int]:
    name, _, count = text.partition("=")
    if name not in PERSON_SETS or not count.isdigit():
        raise SystemExit(f"--people {text!r}: expected SET=N with SET one of {', '.join(PERSON_SETS)}")
    return name, int(count)


# ------------------------------------------------------------------------------------------------ cloze probe
def cloze_records(model: LoadedModel, items, batch_size: int = 8) -> list[dict]:
    """Per item: id, subject, prediction, correct; the cloze protocol of ``c2c eval`` for a model alone."""
    scorer, records = ModelScorer("probe", model, chat=False), []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        state = scorer.prefill_batch([item_prompt(i, "cloze") for i in chunk], [None] * len(chunk), [None] * len(chunk))
        for item, result in zip(chunk, score_items(state, chunk, "cloze")):
            records.append({"id": item.id, "subject": item.subject, "prediction": result["prediction"],
                            "correct": int(result["prediction"] == item.answer), "choices": len(item.choices)})
    return records


def summarise(records: list[dict]) -> dict:
    correct, n = sum(r["correct"] for r in records), len(records)
    by_subject = {}
    for subject in sorted({r["subject"] for r in records}):
        mine = [r["correct"] for r in records if r["subject"] == subject]
        by_subject[subject] = round(sum(mine) / len(mine), 4)
    return {"n": n, "accuracy": round(correct / max(n, 1), 4), "ci95": wilson(correct, n),
            "chance": round(sum(1 / r["choices"] for r in records) / max(n, 1), 4), "by_attribute": by_subject}


def probe(args) -> dict:
    folder = Path(args.encyclopedia)
    model = load_model(args.model, args.dtype, args.device)
    result = {"model": args.model, "encyclopedia": str(folder), "scoring": "cloze", "limit": args.limit, "sets": {}}
    began = time.time()
    for person_set in args.sets.split(","):
        items = load_benchmark(str(folder / f"{person_set}.jsonl"), limit=args.limit, seed=args.seed).items
        result["sets"][person_set] = summarise(cloze_records(model, items, args.batch_size))
        print(person_set, json.dumps(result["sets"][person_set]), file=sys.stderr)
    result["seconds"] = round(time.time() - began, 1)
    out = Path(args.out) if args.out else folder.parent / f"probe_{Path(args.model).name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda p: Path(p).write_text(json.dumps(result, indent=1) + "\n"))
    print(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    b = commands.add_parser("build", help="write the encyclopedia, LoRA-finetune the sharer on it and merge")
    b.add_argument("--out", default="runs/knowledge_handoff")
    b.add_argument("--model", default="gemma3-270m", help="the base model: a built-in name, a folder or a hub id")
    b.add_argument("--seed", type=int, default=0, help="the encyclopedia's and the training's seed")
    b.add_argument("--people", action="append", metavar="SET=N",
                   help=f"people of a set (default {', '.join(f'{k}={v}' for k, v in DEFAULT_SIZES.items())})")
    b.add_argument("--choices", type=int, default=DEFAULT_CHOICES)
    b.add_argument("--r", type=int, default=16)
    b.add_argument("--alpha", type=float, default=32)
    b.add_argument("--dropout", type=float, default=0.05)
    b.add_argument("--lr", type=float, default=1e-3)
    b.add_argument("--epochs", type=float, default=4)
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--max-steps", type=int, help="optimizer steps in all (default: --epochs over the corpus)")
    b.add_argument("--warmup", type=float, default=0.05)
    b.add_argument("--max-length", type=int, default=64, help="tokens per corpus text (longer ones are cut)")
    b.add_argument("--autocast", default="bfloat16", choices=["bfloat16", "float16", "none"],
                   help="the body's autocast dtype in training (none: float32 throughout)")
    b.add_argument("--save-every", type=int, default=100)
    b.add_argument("--log-every", type=int, default=10)
    b.add_argument("--resume", action="store_true", help="continue from OUT/sharer_lora/ (same settings)")
    b.add_argument("--stop-after", type=int, metavar="N", help="stop after N steps of this call (checkpointed)")
    b.add_argument("--device", default="auto")
    b.set_defaults(run=build)
    p = commands.add_parser("probe", help="cloze accuracy of a model on the encyclopedia's question sets")
    p.add_argument("--model", required=True, help="the merged sharer folder, or a receiver spec")
    p.add_argument("--encyclopedia", default="runs/knowledge_handoff/encyclopedia")
    p.add_argument("--sets", default=",".join(PERSON_SETS))
    p.add_argument("--limit", type=int, help="a seeded sample of N questions per set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="JSON file (default ENCYCLOPEDIA/../probe_MODELNAME.json)")
    p.set_defaults(run=probe)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    main()
