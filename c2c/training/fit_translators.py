"""Recipe: fit a pair's context translators in closed form (``c2c train`` with ``method: translator``).

Reads unlabeled texts (the contexts of context-carrying benchmarks, instruction files, synthetic facts), runs
both models over ``Context: {text}``, and solves one ridge regression per receiver layer from the sharer's
position-free K/V to the receiver's own (``translator.fit.TranslatorFit``). Whole texts are held out to choose the
ridge strength and to report R^2. Writes a checkpoint folder that ``C2CModel.from_pretrained`` loads, and
``fit_report.json`` beside it.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from tqdm import tqdm

from ..data import DataError, load_benchmark, load_training_data
from ..data.synthetic import synthetic_items
from ..inputs.context import context_length
from ..model.pair import C2CModel
from ..translator.fit import TranslatorFit, translation_examples


def fitting_texts(specs: list, data_dir: str | None = None, base_dir: str | None = None) -> list[str]:
    """Texts from recipe ``data`` entries: ``{synthetic: N, facts: K, split: train, seed: S}``, a benchmark spec
    (its items' contexts; items without one are skipped; ``join: K``: long texts, each K consecutive distinct
    contexts of one document), or an instruction/chat file (each conversation's text; ``{file: PATH, limit: N}``
    for its first N)."""
    texts = []
    for spec in specs:
        if isinstance(spec, dict) and "synthetic" in spec:
            unknown = set(spec) - {"synthetic", "facts", "split", "seed"}
            if unknown:
                raise DataError(f"synthetic text spec {spec}: unknown keys {sorted(unknown)}")
            texts += [item["context"] for item in synthetic_items(spec.get("split", "train"), int(spec["synthetic"]),
                                                                   int(spec.get("facts", 1)), int(spec.get("seed", 0)))]
        elif isinstance(spec, dict) and "benchmark" in spec:
            bench = load_benchmark(spec["benchmark"], spec.get("split", "train"), data_dir, limit=spec.get("limit"),
                                   seed=spec.get("seed", 0))
            found = [item for item in bench.items if getattr(item, "context", None)]
            if not found:
                raise DataError(f"{bench.name}:{bench.split} has no item with a context to fit a translator on")
            texts += joined_contexts(found, int(spec["join"])) if "join" in spec else [item.context for item in found]
        elif isinstance(spec, dict) and "file" in spec:  # {file: PATH, limit: N}: the first N conversations
            conversations = load_training_data(spec["file"], data_dir, base_dir=base_dir)[:spec.get("limit")]
            texts += ["\n".join(m["content"] for m in c.messages) for c in conversations]
        else:
            texts += ["\n".join(m["content"] for m in c.messages)
                      for c in load_training_data(spec, data_dir, base_dir=base_dir)]
    texts = [t.strip() for t in texts if t and t.strip()]
    if not texts:
        raise DataError("no fitting texts: give `data` entries with text (see c2c.training.fit_translators.fitting_texts)")
    return texts


def joined_contexts(items: list, per_text: int) -> list[str]:
    """Long texts from a benchmark's items, in order: ``per_text`` consecutive distinct contexts of one document
    (a SQuAD article's paragraphs) per text, separated by blank lines; a document's last text may hold fewer."""
    if per_text < 1:
        raise DataError(f"join must be >= 1 contexts per text, got {per_text}")
    documents: dict[str | None, list[str]] = {}
    for item in items:
        paragraphs = documents.setdefault(item.title, [])
        if item.context not in paragraphs:
            paragraphs.append(item.context)
    return ["\n\n".join(paragraphs[start:start + per_text]) for paragraphs in documents.values()
            for start in range(0, len(paragraphs), per_text)]


def fit_pair(pair: C2CModel, texts: list[str], held_out: list[str], batch_size: int = 8,
             max_chars: int | None = None, progress: bool = True) -> dict:
    """Fit every sharer's translator of ``pair`` in place; returns the fit report."""
    if pair.translators is None:
        raise ValueError("this pair has no translator; create it with translator=TranslatorConfig()")
    if max_chars:
        texts = [t[:max_chars] for t in texts]
        held_out = [t[:max_chars] for t in held_out]
    report = {"texts": len(texts), "held_out_texts": len(held_out), "characters": sum(map(len, texts)), "sharers": []}
    for index, sharer in enumerate(pair.sharers):
        started = time.perf_counter()
        fit = TranslatorFit(pair.translators[index])
        ordered = sorted(texts, key=len)  # similar lengths per batch: little padding
        with tqdm(total=len(ordered) + len(held_out), desc=f"fit translator {sharer.name}", disable=not progress,
                  dynamic_ncols=True) as bar:
            for group, is_held in ((ordered, False), (sorted(held_out, key=len), True)):
                for start, (inputs, targets) in zip(range(0, len(group), batch_size),
                                                    translation_examples(pair.receiver, sharer, group, batch_size)):
                    fit.add(inputs, targets, held_out=is_held)
                    bar.update(min(batch_size, len(group) - start))
        extracted = time.perf_counter() - started
        sharer_report = fit.solve()
        longest = max(context_length(sharer.tokenizer, text) for text in texts)
        pair.config.sharers[index].fitted_context_tokens = longest  # a longer context is translated with a warning
        sharer_report.update({"sharer": sharer.name, "longest_text_tokens": longest,
                              "extract_seconds": round(extracted, 1),
                              "solve_seconds": round(time.perf_counter() - started - extracted, 1)})
        report["sharers"].append(sharer_report)
    return report


def split_texts(texts: list[str], held_out_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    count = max(1, int(round(held_out_fraction * len(texts))))
    if count >= len(texts):
        raise DataError(f"{len(texts)} fitting texts cannot spare {count} for held-out; give more text")
    return [texts[i] for i in order[count:]], [texts[i] for i in order[:count]]


def write_report(output: Path, report: dict) -> None:
    (output / "fit_report.json").write_text(json.dumps(report, indent=2) + "\n")
