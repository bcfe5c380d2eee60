"""Training recipe: a fuser (``method: c2c``) or the fair baseline, a LoRA adapter on the receiver alone
(``method: lora``), on the same data, steps and batches; or a context translator (``method: translator``): its
closed-form fit (``training.fit_translators``), then with steps or epochs self-distillation through the receiver
(phase 2, the same loop). Read top to bottom: config, data, models, loop.

Only the fuser (or the adapter) trains; both LLMs are frozen. Loss (``objective``): ``tokens``, the receiver's
next-token cross-entropy on response tokens, averaged over every response token of the global batch; or
``choices`` (multiple-choice data with target "choices"), the cross-entropy of picking the right choice when the
choices are ranked by their cloze score, exactly as ``c2c eval`` ranks them, averaged over the global batch's
items. With ``distill_weight`` > 0 the choice target mixes the right answer with the (first) sharer's own
ranking of the choices, knowledge distillation with the sharer as teacher: a target the receiver alone cannot
predict, so the fuser is paid for reading the sharer, not only for adapting the receiver.

Either way N processes and one process with the same global batch compute the same gradient. Checkpoints are
written atomically every ``save_every`` steps with optimizer, scheduler, RNG states and the step, from which the
data position follows. The components live apart: the recipe (``recipe``), objectives and losses
(``objectives``), checkpoints (``checkpoint``), the processes (``distributed``), the run log (``runlog``).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from ..core.models import LoadedModel, load_model
from ..core.runlog import MetricsLog, append_jsonl, atomic_write, read_jsonl
from ..data import Conversation, DataError, load_training_data
from ..inputs.context import context_length, with_context
from ..model.config import load_config
from ..model.config import FuserConfig
from ..model.pair import C2CModel
from ..runtime.sharers import SharerKVStore
from ..translator.config import TranslatorConfig
from .distributed import Runtime, all_reduce_gradients, global_count, global_sum, init_distributed
from .objectives import choice_loss_sum, choice_scores, objective_sum, one_hot_targets, prepare, split
from .recipe import RecipeError, TrainConfig
from .state import check_output, clean_run_folder, load_trainer_state, resumable, save_trainer_state

__all__ = ["train", "TrainConfig", "RecipeError", "TrainingError", "TrainingInterrupted", "build_model",
           "load_examples", "evaluate_held_out", "fit_translators"]


class TrainingError(RuntimeError):
    """A run that had to stop (e.g. a non-finite loss); the last good checkpoint is kept."""


class TrainingInterrupted(TrainingError):
    """A run stopped by Ctrl-C; the message says where its checkpoint is and how to resume."""


def resume_hint(output: Path, saved_step: int | None = None) -> str:
    """One sentence: what an interrupted run in ``output`` kept and how to go on from it."""
    state = output / "checkpoint" / "trainer_state.json"
    if saved_step is None and state.is_file():
        saved_step = json.loads(state.read_text()).get("step")
    if saved_step and state.is_file():
        return f"the checkpoint of step {saved_step} is kept; resume with: c2c train --resume {output}"
    if (output / "train_config.json").is_file():
        return (f"no checkpoint was saved yet (one is written every save_every steps); start again with: "
                f"c2c train RECIPE --output {output} --overwrite")
    return "nothing was saved; run the same command again"


class Interrupt:
    """SIGINT (Ctrl-C) during the training loop: the first lets the step finish, after which the loop saves a
    checkpoint and stops (``requested``); a second raises KeyboardInterrupt at once, abandoning the step. Only
    installed in the main thread; the previous handler is restored on exit."""

    def __init__(self, announce: bool = True):
        self.announce, self.flag, self.previous = announce, False, None

    def __enter__(self) -> "Interrupt":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum, frame) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        if self.announce:
            print("\nCtrl-C: finishing this step, then saving a checkpoint and stopping (Ctrl-C again abandons the "
                  "step)", file=sys.stderr, flush=True)

    def requested(self, runtime: Runtime) -> bool:
        """Whether any process was interrupted (a collective call: every process calls it after every step)."""
        return global_count(int(self.flag), runtime) > 0


# --------------------------------------------------------------------------------------------- data
def load_examples(config: TrainConfig) -> tuple[list[Conversation], list[Conversation]]:
    """Training and held-out conversations, deterministic in the seed. Errors here come before models load."""
    conversations = []
    for spec in config.distill_data if config.method == "translator" else config.data:
        try:
            conversations += load_training_data(spec, config.data_dir, base_dir=config.recipe_dir)
        except DataError as error:
            raise RecipeError(f"data {spec!r}: {error}") from error
    if config.objective == "choices":
        lacking = [c.source for c in conversations if not c.choices]
        if lacking:
            raise RecipeError(f"objective choices needs multiple-choice data with target: choices; {len(lacking)} "
                              f"examples have no choices (first: {lacking[0]}). Set `target: choices` on each "
                              "benchmark in `data`, or use objective: tokens")
    random.Random(config.seed).shuffle(conversations)
    held_out = conversations[:config.eval_examples] if len(conversations) > config.eval_examples else []
    train = conversations[len(held_out):]
    if config.max_examples is not None and config.method != "translator":  # a translator's counts fitting texts
        train = train[:config.max_examples]
    return train, held_out


def drop_over_long(pair: C2CModel, conversations: list[Conversation], max_length: int,
                   with_contexts: bool = False) -> tuple[list, int]:
    """Examples within ``max_length`` receiver tokens, and how many were dropped; ``with_contexts``: counted with
    the context read as text (the translator's teacher reads the longest row)."""
    kept = []
    for conversation in conversations:
        prompt, response = split(conversation)
        if with_contexts and conversation.context:
            prompt = with_context(prompt, conversation.context)
        responses = conversation.choices or [response]
        length = len(pair.render_prompt(prompt).ids) + max(len(pair.response_ids(prompt, r)) for r in responses)
        if length <= max_length:
            kept.append(conversation)
    return kept, len(conversations) - len(kept)


class Order:
    """Which examples each micro-batch holds: a fresh seeded permutation per epoch, so position = step count."""

    def __init__(self, size: int, batch: int, seed: int):
        self.size, self.batch, self.seed = size, batch, seed
        self.per_epoch = max(size // batch, 1)
        self._epoch, self._permutation = -1, []

    def indices(self, micro_step: int) -> list[int]:
        epoch, offset = divmod(micro_step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._permutation = epoch, list(range(self.size))
            random.Random(self.seed * 1_000_003 + epoch).shuffle(self._permutation)
        return self._permutation[offset * self.batch:(offset + 1) * self.batch]


# --------------------------------------------------------------------------------------------- models
def build_model(config: TrainConfig, receiver: LoadedModel | None = None,
                sharers: list[LoadedModel] | None = None, translator_from: Path | None = None
                ) -> tuple[C2CModel, torch.nn.Module]:
    """The pair and the module that trains (the fusers, the LoRA-wrapped receiver, or the context translators
    loaded from ``translator_from``, a translator checkpoint).

    Models are loaded from the recipe's specs unless given (tests pass tiny models)."""
    receiver = receiver or load_model(config.receiver, config.dtype)
    sharers = sharers or [load_model(s, config.dtype) for s in config.sharers]
    torch.manual_seed(config.seed)
    if config.method == "translator":
        return translator_model(config, receiver, sharers, translator_from)
    if config.method == "lora":  # adapt a private copy: the caller's receiver stays frozen and untouched
        from peft import LoraConfig, get_peft_model
        lora = LoraConfig(**{"target_modules": "all-linear", **config.lora})  # every linear layer but the LM head
        receiver = LoadedModel(receiver.name, get_peft_model(copy.deepcopy(receiver.model), lora), receiver.tokenizer)
    pair = C2CModel.create(receiver, sharers, FuserConfig.from_dict(config.fuser), config.layer_map,
                           config.token_alignment, config.chat_template)
    if config.method == "c2c":
        return pair, pair.fusers
    pair.fusers.requires_grad_(False)
    return pair, receiver.model


def phase_two_start(config: TrainConfig, receiver: LoadedModel | None, sharers: list[LoadedModel] | None
                    ) -> tuple[LoadedModel, list[LoadedModel], Path]:
    """Before a translator's phase 2: its run folder (written first, so that --resume keeps the fit and the
    teacher's answers), the models, and the translator it starts from: ``init_from``, else the closed-form fit
    in ``OUTPUT/closed_form``, fitted now unless an earlier start of this run already did."""
    output = Path(config.output)
    if config.init_from:
        load_config(config.init_from)  # a missing or damaged checkpoint is refused before any model loads
    if int(os.environ.get("RANK", "0")) == 0:
        output.mkdir(parents=True, exist_ok=True)
        (output / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    receiver = receiver or load_model(config.receiver, config.dtype, config.device)
    sharers = sharers or [load_model(s, config.dtype, config.device) for s in config.sharers]
    start = Path(config.init_from) if config.init_from else output / "closed_form"
    if not config.init_from and not (start / "fuser.safetensors").is_file():
        fit_translators(config, receiver, sharers, start)
    return receiver, sharers, start


def translator_model(config: TrainConfig, receiver: LoadedModel, sharers: list[LoadedModel], start: Path
                     ) -> tuple[C2CModel, torch.nn.Module]:
    """Phase 2's pair: the recipe's translator (a new residual starts at zero) holding the maps, statistics and
    source layers of the translator checkpoint ``start``, which must be for this pair."""
    fitted = C2CModel.from_pretrained(start, receiver, sharers)
    wanted = TranslatorConfig.from_dict(config.translator)
    if fitted.translators is None:
        raise RecipeError(f"{start} holds no context translator to train; give init_from a checkpoint written by "
                          "`c2c train` with method: translator")
    if fitted.config.translator.window != wanted.window:
        raise RecipeError(f"{start} maps a window of {fitted.config.translator.window} sharer layers each side, the "
                          f"recipe asks for translator window {wanted.window}; make them agree")
    pair = C2CModel.create(receiver, sharers, None, config.layer_map, config.token_alignment, config.chat_template,
                           translator=wanted, translator_sources=[t.sources for t in fitted.translators])
    missing, unexpected = pair.translators.load_state_dict(fitted.translators.state_dict(), strict=False)
    for mine, theirs in zip(pair.config.sharers, fitted.config.sharers):
        mine.fitted_context_tokens = theirs.fitted_context_tokens
    if unexpected or any(".residuals." not in name for name in missing):
        raise RecipeError(f"{start}'s translator does not fit the recipe's (missing {missing[:3]}, unexpected "
                          f"{unexpected[:3]}); start from a checkpoint with the same translator settings")
    return pair, pair.translators


def parameter_groups(module: torch.nn.Module, config: TrainConfig) -> list[dict]:
    gates = [p for n, p in module.named_parameters() if p.requires_grad and n.endswith("gate_logits")]
    others = [p for n, p in module.named_parameters() if p.requires_grad and not n.endswith("gate_logits")]
    groups = [{"params": others, "lr": config.lr, "weight_decay": config.weight_decay}]
    if gates:
        groups.append({"params": gates, "lr": config.gate_lr, "weight_decay": 0.0})
    return groups


def lr_factor(step: int, total: int, warmup: float, schedule: str) -> float:
    """The learning rate's factor at ``step`` of ``total``: linear warm-up over the ``warmup`` share of the steps,
    then a linear or cosine decay to zero."""
    warm = int(warmup * total)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(total - warm, 1)
    return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------- the run
def train(config: TrainConfig, resume: bool = False, stop_after: int | None = None,
          receiver: LoadedModel | None = None, sharers: list[LoadedModel] | None = None,
          overwrite: bool = False) -> Path:
    """Run (or resume) a recipe; returns the output folder, which ``C2CModel.from_pretrained`` loads.

    ``stop_after`` ends the run early after that many optimizer steps (tests of resumption use it). An existing
    non-empty output folder is refused unless ``resume`` or ``overwrite`` (see ``check_output``).
    """
    check_output(Path(config.output), resume, overwrite, main=int(os.environ.get("RANK", "0")) == 0)
    output = Path(config.output)
    if resume:  # before any model loads: a run that can go on, without what an interrupted write left behind
        if not resumable(output):
            raise RecipeError(f"cannot resume: {output} holds no checkpoint (one is written every save_every "
                              "steps); start the run afresh with --overwrite")
        if int(os.environ.get("RANK", "0")) == 0:
            clean_run_folder(output)
    translator_from = None
    if config.method == "translator":
        if not config.distills:
            return fit_translators(config, receiver, sharers)
        receiver, sharers, translator_from = phase_two_start(config, receiver, sharers)
        resume = resume and (output / "checkpoint").is_dir()  # else stopped before phase 2's first checkpoint
    runtime = init_distributed(config.device)
    train_set, held_out = load_examples(config)
    pair, trainable = build_model(config, receiver, sharers, translator_from)
    pair.to(runtime.device)
    train_set, dropped = drop_over_long(pair, train_set, config.max_length, config.method == "translator")
    if config.method == "translator" and train_set:  # phase 2 trains the maps on these contexts too
        for sharer, record in zip(pair.sharers, pair.config.sharers):
            longest = max((context_length(sharer.tokenizer, c.context) for c in train_set if c.context), default=0)
            record.fitted_context_tokens = max(record.fitted_context_tokens or 0, longest)
    if config.teacher_tokens:
        train_set = teacher_continuations(pair, train_set, config.teacher_tokens, output / "teacher.jsonl")
    if not train_set:
        raise RecipeError(f"every training example is longer than max_length={config.max_length} tokens")
    global_batch = config.batch_size * runtime.world
    order = Order(len(train_set), global_batch, config.seed)
    total = config.steps or max(math.ceil(config.epochs * order.per_epoch / config.grad_accum), 1)
    trainable.train()
    optimizer = torch.optim.AdamW(parameter_groups(trainable, config), betas=(0.9, 0.999), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, config.warmup,
                                                                                     config.schedule))
    store = SharerKVStore.for_pair(pair, config.sharer_cache_gb) if config.sharer_cache and config.method == "c2c" \
        else None
    if store is not None:
        pair.sharer_cache_provider = store
    step = 0
    if resume:
        step = load_trainer_state(output / "checkpoint", trainable, optimizer, scheduler, runtime.device)
    elif runtime.main:
        output.mkdir(parents=True, exist_ok=True)
        (output / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    log = MetricsLog(output / "metrics.jsonl", runtime.main)
    if resume:  # the records of steps after the checkpoint are about to be redone (see read_metrics)
        log.write({"event": "resume", "step": step})
    else:
        log.write({"event": "start", "examples": len(train_set), "dropped_over_long": dropped,
                   "held_out": len(held_out), "steps": total, "global_batch": global_batch * config.grad_accum,
                   "trainable_parameters": sum(p.numel() for p in trainable.parameters() if p.requires_grad)})
    if held_out and step == 0:  # the starting point: the receiver alone (zero-init fuser, LoRA B = 0)
        log.write({"step": 0, **evaluate_held_out(pair, trainable, held_out, config, runtime)})
    bar = tqdm(total=total, initial=step, desc=f"train {config.method}", disable=not runtime.main, dynamic_ncols=True)
    last_saved = step
    with Interrupt(runtime.main) as interrupt:  # Ctrl-C: finish the step, save, stop; twice: abandon it
        try:
            while step < total and (stop_after is None or step < stop_after):
                started = time.perf_counter()
                pair.set_gate_temperature(step, total)
                micro_batches = []
                for micro in range(config.grad_accum):
                    indices = order.indices(step * config.grad_accum + micro)
                    rows = indices[runtime.rank * config.batch_size:(runtime.rank + 1) * config.batch_size]
                    micro_batches.append(prepare(pair, [train_set[i] for i in rows], runtime.device, config))
                units = global_count(sum(b.units for b in micro_batches), runtime)  # response tokens, or items
                processed = global_count(sum(int(b.batch.attention_mask.sum()) for b in micro_batches), runtime)
                loss_sum = 0.0
                for batch in micro_batches:
                    loss = objective_sum(pair, batch, config.method != "lora", config.reconstruction_weight) / units
                    loss.backward()
                    loss_sum += loss.item()
                loss_sum = global_sum(loss_sum, runtime)
                if not math.isfinite(loss_sum):
                    raise TrainingError(f"the loss became {loss_sum} at step {step + 1}; stopped without saving. The "
                                        f"last good checkpoint is {output / 'checkpoint'} (step {last_saved}). Lower "
                                        f"lr or gate_lr in the recipe and run `c2c train --resume {output}`.")
                all_reduce_gradients(trainable, runtime)
                grad_norm = torch.nn.utils.clip_grad_norm_([p for p in trainable.parameters() if p.requires_grad],
                                                           config.clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                elapsed = time.perf_counter() - started
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum:.4f}", tok_s=f"{processed / elapsed:.0f}")
                if step % config.log_every == 0 or step == total:
                    log.write({"step": step, "loss": loss_sum, "grad_norm": float(grad_norm), "loss_units": units,
                               "tokens_per_s": processed / elapsed, "step_s": elapsed,
                               "lr": scheduler.get_last_lr()[0], **gate_summary(pair, config.method)})
                if held_out and (step % config.eval_every == 0 or step == total):
                    log.write({"step": step, **evaluate_held_out(pair, trainable, held_out, config, runtime)})
                if step % config.save_every == 0 or step == total:
                    save_checkpoint(output, pair, trainable, optimizer, scheduler, step, config, runtime)
                    last_saved = step
                if interrupt.requested(runtime) and step < total:  # every process stops after the same step
                    if last_saved != step:
                        save_checkpoint(output, pair, trainable, optimizer, scheduler, step, config, runtime)
                        last_saved = step
                    bar.close()
                    raise TrainingInterrupted(f"stopped after step {step} of {total} (Ctrl-C); "
                                              f"{resume_hint(output, step)}")
        except KeyboardInterrupt:
            bar.close()
            raise TrainingInterrupted(f"stopped during step {step + 1} of {total} (Ctrl-C twice): that step is "
                                      f"abandoned; {resume_hint(output, last_saved)}") from None
    bar.close()
    if store is not None and runtime.main:
        log.write({"event": "sharer_cache", **store.report()})
    if runtime.world > 1:
        dist.destroy_process_group()
    return output


def gate_summary(pair: C2CModel, method: str) -> dict:
    if method != "c2c":
        return {}
    logits = pair.gate_logits()  # (sharers, layers, 2)
    return {"temperature": float(next(pair.layer_fusers()).temperature),
            "gates_open": float(pair.open_gates().float().mean()),
            "gate_logits": [[round(v, 4) for v in layer] for layer in logits[0].tolist()]}


@torch.no_grad()
def evaluate_held_out(pair: C2CModel, trainable: torch.nn.Module, held_out: list[Conversation], config: TrainConfig,
                      runtime: Runtime, shuffled: bool = False, fuse: bool | None = None) -> dict:
    """The objective averaged over the held-out slice in eval mode (hard gates, no dropout); with the choice
    objective also the accuracy of the choice ranking (the loss is then the right answer's cross-entropy, also
    when training distils the sharer, so that runs compare), and when distilling, how often the top choice is
    the sharer's own. ``shuffled``: the control where each example's sharer reads the next held-out example's
    prompt. ``fuse``: fusion on or off (default: on for a c2c or translator run)."""
    fuse = config.method != "lora" if fuse is None else fuse
    trainable.eval()
    total = units = correct = agree = 0.0
    partners = [split(c)[0] for c in held_out[1:] + held_out[:1]] if shuffled else None
    for start in range(0, len(held_out), config.batch_size):
        micro = prepare(pair, held_out[start:start + config.batch_size], runtime.device, config,
                        partners[start:start + config.batch_size] if shuffled else None)
        units += micro.units
        if micro.choices is None:
            total += float(objective_sum(pair, micro, fuse))
            continue
        scores = choice_scores(pair, micro, fuse)
        total += float(choice_loss_sum(scores, one_hot_targets(micro.answers, micro.choices, runtime.device)))
        correct += sum(int(s.argmax()) == a for s, a in zip(scores, micro.answers))
        agree += sum(int(s.argmax()) == pick for s, pick in zip(scores, micro.sharer_picks or []))
    trainable.train()
    record = {"eval_loss": total / max(units, 1)}
    if config.objective == "choices":
        record["eval_accuracy"] = correct / max(units, 1)
    if config.distill_weight:
        record["eval_sharer_agreement"] = agree / max(units, 1)
    return record


# --------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(output: Path, pair: C2CModel, trainable: torch.nn.Module, optimizer, scheduler, step: int,
                    config: TrainConfig, runtime: Runtime) -> None:
    """Write the resumable state to ``output/checkpoint`` and the usable model to ``output``, atomically."""
    if not runtime.main:
        return
    save_trainer_state(output, trainable, optimizer, scheduler, step)
    if config.method != "lora":
        pair.save_pretrained(output)
    else:
        trainable.save_pretrained(output / "lora")
        atomic_write(output / "lora_receiver.json", lambda p: Path(p).write_text(json.dumps(
            {"receiver": config.receiver, "adapter": "lora", "step": step}) + "\n"))


def fit_translators(config: TrainConfig, receiver: LoadedModel | None = None,
                    sharers: list[LoadedModel] | None = None, output: Path | None = None) -> Path:
    """``method: translator``: fit the pair's context translators in closed form on the recipe's texts, into
    ``output`` (default: the recipe's)."""
    from .fit_translators import fit_pair, fitting_texts, split_texts, write_report
    try:
        texts = fitting_texts(config.data, config.data_dir, config.recipe_dir)
    except DataError as error:
        raise RecipeError(f"data: {error}") from error
    random.Random(config.seed).shuffle(texts)
    if config.eval_data:  # e.g. dev-split facts: the ridge strength is chosen on names the fit never saw
        fitting = texts[:config.max_examples]
        held_out = fitting_texts(config.eval_data, config.data_dir, config.recipe_dir)[:config.eval_examples]
    else:
        if config.max_examples is not None:
            texts = texts[:config.max_examples + config.eval_examples]
        fitting, held_out = split_texts(texts, config.eval_examples / len(texts), config.seed)
    receiver = receiver or load_model(config.receiver, config.dtype, config.device)
    sharers = sharers or [load_model(s, config.dtype, config.device) for s in config.sharers]
    pair = C2CModel.create(receiver, sharers, None, config.layer_map, config.token_alignment, config.chat_template,
                           translator=TranslatorConfig.from_dict(config.translator))
    started = time.time()
    report = fit_pair(pair, fitting, held_out, max_chars=config.max_text_chars)
    report["minutes"] = round((time.time() - started) / 60, 2)
    output = Path(output or config.output)
    pair.save_pretrained(output)
    (output / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    write_report(output, report)
    return output


def teacher_continuations(pair: C2CModel, conversations: list[Conversation], tokens: int, path: Path,
                          batch_size: int = 16) -> list[Conversation]:
    """The conversations with their responses replaced by the teacher's own greedy continuation (the receiver
    reading the context as text, ``tokens`` new tokens): the student then learns to answer in the teacher's words.
    Written to ``path`` as they are made and read back from it on resume, so they are generated once."""
    def key(conversation: Conversation) -> str:  # the teacher's input: one item may come with several prompts
        prompt = json.dumps([split(conversation)[0], conversation.context], ensure_ascii=False)
        return hashlib.sha1(prompt.encode()).hexdigest()
    done = {record["key"]: record["response"] for record in read_jsonl(path) if "key" in record}
    todo = list({key(c): c for c in conversations if key(c) not in done}.values())
    for start in tqdm(range(0, len(todo), batch_size), desc="teacher continuations", disable=not todo,
                      dynamic_ncols=True):
        rows = todo[start:start + batch_size]
        prompts = [with_context(split(c)[0], c.context) for c in rows]
        texts = pair.generate(prompts, max_new_tokens=tokens, fuse=False)
        records = [{"key": key(c), "source": c.source, "response": text} for c, text in zip(rows, texts)]
        append_jsonl(path, records)
        done.update((r["key"], r["response"]) for r in records)
    return [dataclasses.replace(c, messages=c.messages[:-1] + [{"role": "assistant", "content": done[key(c)]}])
            for c in conversations if done[key(c)].strip()]
