"""Training recipe: a fuser (``method: c2c``) or the fair baseline, a LoRA adapter on the receiver alone
(``method: lora``), on the same data, steps and batches. Read top to bottom: config, data, models, loop.

Only the fuser (or the adapter) trains; both LLMs are frozen. Loss (``objective``): ``tokens``, the receiver's
next-token cross-entropy on response tokens, averaged over every response token of the global batch; or
``choices`` (multiple-choice data with target "choices"), the cross-entropy of picking the right choice when the
choices are ranked by their cloze score, exactly as ``c2c eval`` ranks them, averaged over the global batch's
items. With ``distill_weight`` > 0 the choice target mixes the right answer with the (first) sharer's own
ranking of the choices, knowledge distillation with the sharer as teacher: a target the receiver alone cannot
predict, so the fuser is paid for reading the sharer, not only for adapting the receiver.

Either way N processes and one process with the same global batch compute the same gradient. Checkpoints are
written atomically every ``save_every`` steps with optimizer, scheduler, RNG states and the step, from which the
data position follows.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn import functional as F
import yaml
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .data import Conversation, DataError, load_training_data
from .evaluate import read_jsonl
from .fuser import FuserConfig
from .kvstore import SharerKVStore
from .models import DEFAULT_RECEIVER, DEFAULT_SHARER, DTYPES, LoadedModel, load_model, parse_device
from .pair import Batch, C2CModel, atomic_write
from .translator import TranslatorConfig
from .validate import check_types

METHODS = ("c2c", "lora", "translator")  # translator: closed-form fit of context translators (c2c.fit)
OBJECTIVES = ("tokens", "choices")


class RecipeError(ValueError):
    """A training recipe that cannot run; raised before any model loads."""


class TrainingError(RuntimeError):
    """A run that had to stop (e.g. a non-finite loss); the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    output: str = "runs/c2c"
    method: str = "c2c"
    objective: str = "tokens"  # or "choices": rank the choices of multiple-choice data (target "choices")
    # objective "choices": the target is (1 - w) * one-hot(answer) + w * softmax(first sharer's cloze scores / T).
    # The sharer's per-character scores of the choices differ by ~0.1 nats, so at T = 1 its target is nearly
    # uniform; at the default 0.1 its top choice averages ~0.65 on the test sets.
    distill_weight: float = 0.0
    distill_temperature: float = 0.1
    receiver: str = DEFAULT_RECEIVER
    sharers: list[str] = field(default_factory=lambda: [DEFAULT_SHARER])
    fuser: dict = field(default_factory=dict)  # FuserConfig fields
    layer_map: str | list = "last_aligned"
    token_alignment: str = "offsets"
    chat_template: bool = True
    dtype: str = "float32"  # the frozen models' dtype; the trained weights and the optimizer stay float32
    device: str = "auto"  # auto: this process's GPU (LOCAL_RANK under torchrun) when there is one, else the CPU
    data: list = field(default_factory=list)  # data.load_training_data specs
    data_dir: str | None = None
    recipe_dir: str | None = None  # set by from_file: relative data files resolve against it after the data dir
    max_examples: int | None = None  # a seeded random subset of the training data
    eval_examples: int = 64  # held out from the data, never trained on
    max_length: int = 512  # prompt + response receiver tokens; longer examples are dropped (and counted)
    steps: int | None = None  # optimizer steps; or give epochs
    epochs: float | None = None
    batch_size: int = 4  # per process, per micro-step
    grad_accum: int = 1
    lr: float = 1e-4
    gate_lr: float = 1e-2  # gate logits need their own rate: at lr 1e-4 they never leave 0 (issue #3)
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of steps
    schedule: str = "linear"  # or "cosine"; decays to 0 after warm-up
    clip: float = 1.0
    seed: int = 42
    log_every: int = 10
    eval_every: int = 100
    save_every: int = 100
    sharer_cache: bool = True  # reuse each example's sharer K/V from disk across epochs
    sharer_cache_gb: float = 8.0
    lora: dict = field(default_factory=lambda: {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05})
    translator: dict = field(default_factory=dict)  # TranslatorConfig fields (method translator)
    max_text_chars: int | None = None  # method translator: each fitting text is cut to this many characters
    eval_data: list = field(default_factory=list)  # method translator: held-out texts (else eval_examples of data)

    def __post_init__(self):
        check_types(self, RecipeError)
        if self.dtype not in DTYPES:
            raise RecipeError(f"dtype {self.dtype!r} is not supported; expected one of {sorted(DTYPES)}")
        if self.method not in METHODS:
            raise RecipeError(f"method {self.method!r} is unknown; expected one of {METHODS}")
        if self.objective not in OBJECTIVES:
            raise RecipeError(f"objective {self.objective!r} is unknown; expected one of {OBJECTIVES}")
        if self.method == "translator":
            try:
                TranslatorConfig.from_dict(self.translator)
            except (TypeError, ValueError) as error:
                raise RecipeError(f"translator: {error}") from error
        elif (self.steps is None) == (self.epochs is None):
            raise RecipeError(f"give exactly one of steps or epochs (got steps={self.steps}, epochs={self.epochs})")
        if not self.data:
            raise RecipeError("no training data: set `data` to a list of files or benchmark specs")
        if self.schedule not in ("linear", "cosine"):
            raise RecipeError(f"schedule {self.schedule!r} is unknown; expected linear or cosine")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise RecipeError(f"distill_weight must be within [0, 1], got {self.distill_weight}")
        if self.distill_weight and self.objective != "choices":
            raise RecipeError(f"distill_weight={self.distill_weight} distils the sharer's ranking of choices and "
                              f"needs objective: choices (got objective: {self.objective})")
        if self.distill_temperature <= 0:
            raise RecipeError(f"distill_temperature must be > 0, got {self.distill_temperature}")
        for name in ("batch_size", "grad_accum", "max_length", "log_every", "eval_every", "save_every"):
            if getattr(self, name) < 1:
                raise RecipeError(f"{name} must be >= 1, got {getattr(self, name)}")
        try:
            FuserConfig.from_dict(self.fuser)
        except (TypeError, ValueError) as error:
            raise RecipeError(f"fuser: {error}") from error

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(f"unknown recipe keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path, overrides: dict | None = None) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe {path} does not exist")
        text = path.read_text()
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            tabs = " (YAML indents with spaces, not tabs)" if "\t" in text else ""
            raise RecipeError(f"recipe {path} is not valid YAML{where}: {getattr(error, 'problem', None) or error}"
                              f"{tabs}") from None
        if not isinstance(data, dict):
            raise RecipeError(f"recipe {path} must be a YAML mapping of keys to values")
        return cls.from_dict({"recipe_dir": str(path.resolve().parent), **data, **(overrides or {})})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------- data
def load_examples(config: TrainConfig) -> tuple[list[Conversation], list[Conversation]]:
    """Training and held-out conversations, deterministic in the seed. Errors here come before models load."""
    conversations = []
    for spec in config.data:
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
    if config.max_examples is not None:
        train = train[:config.max_examples]
    return train, held_out


def split(conversation: Conversation) -> tuple[list[dict], str]:
    """Prompt messages and the target text (the last, assistant message)."""
    return conversation.messages[:-1], conversation.messages[-1]["content"]


def drop_over_long(pair: C2CModel, conversations: list[Conversation], max_length: int) -> tuple[list, int]:
    kept = []
    for conversation in conversations:
        prompt, response = split(conversation)
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
                sharers: list[LoadedModel] | None = None) -> tuple[C2CModel, torch.nn.Module]:
    """The pair and the module that trains (the fusers, or the LoRA-wrapped receiver).

    Models are loaded from the recipe's specs unless given (tests pass tiny models)."""
    receiver = receiver or load_model(config.receiver, config.dtype)
    sharers = sharers or [load_model(s, config.dtype) for s in config.sharers]
    torch.manual_seed(config.seed)
    if config.method == "lora":  # adapt a private copy: the caller's receiver stays frozen and untouched
        from peft import LoraConfig, get_peft_model
        lora = LoraConfig(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj"], **config.lora)
        receiver = LoadedModel(receiver.name, get_peft_model(copy.deepcopy(receiver.model), lora), receiver.tokenizer)
    pair = C2CModel.create(receiver, sharers, FuserConfig.from_dict(config.fuser), config.layer_map,
                           config.token_alignment, config.chat_template)
    if config.method == "c2c":
        return pair, pair.fusers
    pair.fusers.requires_grad_(False)
    return pair, receiver.model


def parameter_groups(module: torch.nn.Module, config: TrainConfig) -> list[dict]:
    gates = [p for n, p in module.named_parameters() if p.requires_grad and n.endswith("gate_logits")]
    others = [p for n, p in module.named_parameters() if p.requires_grad and not n.endswith("gate_logits")]
    groups = [{"params": others, "lr": config.lr, "weight_decay": config.weight_decay}]
    if gates:
        groups.append({"params": gates, "lr": config.gate_lr, "weight_decay": 0.0})
    return groups


def lr_factor(step: int, total: int, config: TrainConfig) -> float:
    warmup = int(config.warmup * total)
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 1.0 - progress if config.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------------------------- the run
@dataclass
class Runtime:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> Runtime:
    """torchrun sets WORLD_SIZE/RANK: gloo on CPU, nccl on GPU. One process otherwise. A GPU ``device`` without
    an index means this process's GPU (LOCAL_RANK)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = parse_device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if world == 1:
        return Runtime(device=device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(dist.get_rank(), world, device)


def check_output(output: Path, resume: bool, overwrite: bool, main: bool = True) -> None:
    """A run never overwrites another's folder by accident: a non-empty output folder needs ``resume`` (continue
    that run) or ``overwrite`` (start it afresh; only a c2c run folder is ever removed)."""
    if resume or not output.exists():
        return
    if not output.is_dir():
        raise RecipeError(f"output {output} is a file, not a folder; give a new or empty folder as output")
    present = sorted(p.name for p in output.iterdir())
    if not present:
        return
    if not overwrite:
        raise RecipeError(f"output folder {output} already holds {', '.join(present[:4])}"
                          f"{' ...' if len(present) > 4 else ''}: a finished or interrupted run is never overwritten. "
                          f"Continue it with --resume {output}, choose another --output, or start afresh with "
                          "--overwrite")
    if not (output / "train_config.json").is_file():
        raise RecipeError(f"--overwrite replaces only a c2c run folder (one with train_config.json); {output} is "
                          "not one: choose another --output")
    if main:
        shutil.rmtree(output)


def train(config: TrainConfig, resume: bool = False, stop_after: int | None = None,
          receiver: LoadedModel | None = None, sharers: list[LoadedModel] | None = None,
          overwrite: bool = False) -> Path:
    """Run (or resume) a recipe; returns the output folder, which ``C2CModel.from_pretrained`` loads.

    ``stop_after`` ends the run early after that many optimizer steps (tests of resumption use it). An existing
    non-empty output folder is refused unless ``resume`` or ``overwrite`` (see ``check_output``).
    """
    check_output(Path(config.output), resume, overwrite, main=int(os.environ.get("RANK", "0")) == 0)
    if config.method == "translator":
        return fit_translators(config, receiver, sharers)
    runtime = init_distributed(config.device)
    output = Path(config.output)
    train_set, held_out = load_examples(config)
    pair, trainable = build_model(config, receiver, sharers)
    pair.receiver.model.to(runtime.device)
    for sharer in pair.sharers:
        sharer.model.to(runtime.device)
    pair.fusers.to(runtime.device)
    train_set, dropped = drop_over_long(pair, train_set, config.max_length)
    if not train_set:
        raise RecipeError(f"every training example is longer than max_length={config.max_length} tokens")
    global_batch = config.batch_size * runtime.world
    order = Order(len(train_set), global_batch, config.seed)
    total = config.steps or max(math.ceil(config.epochs * order.per_epoch / config.grad_accum), 1)
    trainable.train()
    optimizer = torch.optim.AdamW(parameter_groups(trainable, config), betas=(0.9, 0.999), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, config))
    store = SharerKVStore.for_pair(pair, config.sharer_cache_gb) if config.sharer_cache and config.method == "c2c" \
        else None
    step = 0
    if resume:
        step = load_checkpoint(output / "checkpoint", trainable, optimizer, scheduler, runtime)
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
    while step < total and (stop_after is None or step < stop_after):
        started = time.perf_counter()
        pair.set_gate_temperature(step, total)
        micro_batches = []
        for micro in range(config.grad_accum):
            indices = order.indices(step * config.grad_accum + micro)
            rows = indices[runtime.rank * config.batch_size:(runtime.rank + 1) * config.batch_size]
            micro_batches.append(prepare(pair, [train_set[i] for i in rows], store, runtime.device, config))
        units = global_count(sum(b.units for b in micro_batches), runtime)  # response tokens, or items
        processed = global_count(sum(int(b.batch.attention_mask.sum()) for b in micro_batches), runtime)
        loss_sum = 0.0
        for batch in micro_batches:
            loss = objective_sum(pair, batch, config.method) / units
            loss.backward()
            loss_sum += loss.item()
        loss_sum = global_sum(loss_sum, runtime)
        if not math.isfinite(loss_sum):
            raise TrainingError(f"the loss became {loss_sum} at step {step + 1}; stopped without saving. The last "
                                f"good checkpoint is {output / 'checkpoint'} (step {last_saved}). Lower lr or "
                                f"gate_lr in the recipe and run `c2c train --resume {output}`.")
        all_reduce_gradients(trainable, runtime)
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in trainable.parameters() if p.requires_grad], config.clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        elapsed = time.perf_counter() - started
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.4f}", tok_s=f"{processed / elapsed:.0f}")
        if step % config.log_every == 0 or step == total:
            log.write({"step": step, "loss": loss_sum, "grad_norm": float(grad_norm), "loss_units": units,
                       "tokens_per_s": processed / elapsed, "step_s": elapsed, "lr": scheduler.get_last_lr()[0],
                       **gate_summary(pair, config.method)})
        if held_out and (step % config.eval_every == 0 or step == total):
            log.write({"step": step, **evaluate_held_out(pair, trainable, held_out, config, runtime)})
        if step % config.save_every == 0 or step == total:
            save_checkpoint(output, pair, trainable, optimizer, scheduler, step, config, runtime)
            last_saved = step
    bar.close()
    if store is not None and runtime.main:
        log.write({"event": "sharer_cache", **store.report()})
    if runtime.world > 1:
        dist.destroy_process_group()
    return output


@dataclass
class MicroBatch:
    batch: Batch
    choices: list[list[str]] | None = None  # objective "choices": each prompt's continuations
    answers: list[int] | None = None
    targets: list[torch.Tensor] | None = None  # objective "choices": per prompt a distribution over its choices
    sharer_picks: list[int] | None = None  # when distilling: the sharer's own top choice per prompt

    @property
    def units(self) -> int:
        """What the loss is averaged over: items (choices) or response tokens."""
        return len(self.choices) if self.choices is not None else int((self.batch.labels != -100).sum())


def prepare(pair: C2CModel, conversations: list[Conversation], store, device: torch.device, config: TrainConfig,
            sharer_prompts: list | None = None) -> MicroBatch:
    """Tokenized, aligned batch (and, for the choice objective, its targets). ``sharer_prompts`` makes the
    sharer read other prompts; the distillation target always comes from the sharer reading the example's own."""
    prompts, responses = zip(*(split(c) for c in conversations))
    choices = config.objective == "choices"
    # the sharers read each example's context (the fused-prompt channel); the LoRA receiver never sees it
    contexts = [c.context for c in conversations] if config.method == "c2c" and any(c.context for c in conversations) \
        else None
    batch = pair.prepare(list(prompts), None if choices else list(responses), sharer_prompts, sharer_contexts=contexts)
    if store is not None:
        batch.sharer_kv = store.batch_kv(pair, batch)
    batch = batch.to(device)
    if not choices:
        return MicroBatch(batch)
    options, answers = [c.choices for c in conversations], [c.answer for c in conversations]
    targets = one_hot_targets(answers, options, device)
    if not config.distill_weight:
        return MicroBatch(batch, options, answers, targets)
    own = batch if sharer_prompts is None else pair.prepare(list(prompts)).to(device)
    sharer_scores = pair.sharer_choice_scores(own, options)
    w, temperature = config.distill_weight, config.distill_temperature
    targets = [(1 - w) * t + w * torch.softmax(s.float() / temperature, -1) for t, s in zip(targets, sharer_scores)]
    return MicroBatch(batch, options, answers, targets, [int(s.argmax()) for s in sharer_scores])


def one_hot_targets(answers: list[int], choices: list[list[str]], device: torch.device) -> list[torch.Tensor]:
    return [F.one_hot(torch.tensor(a, device=device), len(c)).float() for a, c in zip(answers, choices)]


def mixed_precision(pair: C2CModel):
    """Autocast to the models' dtype, bf16 for float32 models on a GPU; nothing for float32 models on a CPU.
    The trained weights and the optimizer stay float32."""
    device, dtype = pair.device, pair.receiver.model.dtype
    if device.type == "cuda" and dtype == torch.float32:
        dtype = torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def choice_scores(pair: C2CModel, micro: MicroBatch, method: str) -> list[torch.Tensor]:
    with mixed_precision(pair):
        return pair.choice_scores(micro.batch, micro.choices, fuse=method == "c2c")


def objective_sum(pair: C2CModel, micro: MicroBatch, method: str) -> torch.Tensor:
    """Sum of the loss over the micro-batch's units (the caller divides by the global count)."""
    if micro.choices is not None:
        return choice_loss_sum(choice_scores(pair, micro, method), micro.targets)
    with mixed_precision(pair):
        return pair(micro.batch, fuse=method == "c2c", reduction="sum")[1]


def choice_loss_sum(scores: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of each item's target distribution under a softmax over its cloze scores, summed over
    items (with one-hot targets: the cross-entropy of the right choice)."""
    return sum(-(t * torch.log_softmax(s.float(), -1)).sum() for s, t in zip(scores, targets))


def all_reduce_gradients(module: torch.nn.Module, runtime: Runtime) -> None:
    """Data parallelism: sum the trainable gradients of every process (each loss is already divided by the
    global token count), in one flat message. Only the fuser's (or adapter's) gradients cross processes."""
    if runtime.world == 1:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    for grad, chunk in zip(grads, flat.split([g.numel() for g in grads])):
        grad.copy_(chunk.view_as(grad))


def global_count(value: int, runtime: Runtime) -> int:
    return int(global_sum(float(value), runtime))


def global_sum(value: float, runtime: Runtime) -> float:
    if runtime.world == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=runtime.device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def gate_summary(pair: C2CModel, method: str) -> dict:
    if method != "c2c":
        return {}
    logits = pair.gate_logits()  # (sharers, layers, 2)
    return {"temperature": float(next(pair.layer_fusers()).temperature), "gates_open": float((logits > 0).float().mean()),
            "gate_logits": [[round(v, 4) for v in layer] for layer in logits[0].tolist()]}


@torch.no_grad()
def evaluate_held_out(pair: C2CModel, trainable: torch.nn.Module, held_out: list[Conversation], config: TrainConfig,
                      runtime: Runtime, shuffled: bool = False) -> dict:
    """The objective averaged over the held-out slice in eval mode (hard gates, no dropout); with the choice
    objective also the accuracy of the choice ranking (the loss is then the right answer's cross-entropy, also
    when training distils the sharer, so that runs compare), and when distilling, how often the top choice is
    the sharer's own. ``shuffled``: the control where each example's sharer reads the next held-out example's
    prompt."""
    trainable.eval()
    total = units = correct = agree = 0.0
    partners = [split(c)[0] for c in held_out[1:] + held_out[:1]] if shuffled else None
    for start in range(0, len(held_out), config.batch_size):
        micro = prepare(pair, held_out[start:start + config.batch_size], None, runtime.device, config,
                        partners[start:start + config.batch_size] if shuffled else None)
        units += micro.units
        if micro.choices is None:
            total += float(objective_sum(pair, micro, config.method))
            continue
        scores = choice_scores(pair, micro, config.method)
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


class MetricsLog:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps({"time": time.time(), **record}) + "\n")


def read_metrics(run: str | Path) -> list[dict]:
    """A run's ``metrics.jsonl`` as if it had run uninterrupted: records of the steps a resume redid (logged
    after the checkpoint it resumed from, before the interruption) are dropped for the redone ones."""
    records: list[dict] = []
    for record in read_jsonl(Path(run) / "metrics.jsonl"):
        if record.get("event") == "resume":
            records = [r for r in records if r.get("step", 0) <= record["step"]]
        records.append(record)
    return records


def training_minutes(run: str | Path) -> float:
    """Wall-clock minutes a run spent training, summed over its sessions: a resumed run's pause is not counted."""
    spans, start, last = [], None, None
    for record in read_jsonl(Path(run) / "metrics.jsonl"):
        if record.get("event") == "resume" and start is not None:
            spans.append(last - start)
            start = None
        start = record["time"] if start is None else start
        last = record["time"]
    if start is not None:
        spans.append(last - start)
    return round(sum(spans) / 60, 1)


# --------------------------------------------------------------------------------------------- checkpoints
def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous() for n, p in module.named_parameters() if p.requires_grad}


def save_checkpoint(output: Path, pair: C2CModel, trainable: torch.nn.Module, optimizer, scheduler, step: int,
                    config: TrainConfig, runtime: Runtime) -> None:
    """Write the resumable state to ``output/checkpoint`` and the usable model to ``output``, atomically."""
    if not runtime.main:
        return
    staging = output / "checkpoint.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(trainable_state(trainable), str(staging / "trainable.safetensors"))
    optimizer_tensors, optimizer_meta = flatten_optimizer(optimizer)
    save_file(optimizer_tensors, str(staging / "optimizer.safetensors"))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(staging / "rng.safetensors"))
    state = {"step": step, "optimizer": optimizer_meta, "scheduler": scheduler.state_dict()}
    (staging / "trainer_state.json").write_text(json.dumps(state))
    previous = output / "checkpoint.previous"
    shutil.rmtree(previous, ignore_errors=True)
    if (output / "checkpoint").exists():
        (output / "checkpoint").rename(previous)
    staging.rename(output / "checkpoint")
    shutil.rmtree(previous, ignore_errors=True)
    if config.method == "c2c":
        pair.save_pretrained(output)
    else:
        trainable.save_pretrained(output / "lora")
        atomic_write(output / "lora_receiver.json", lambda p: Path(p).write_text(json.dumps(
            {"receiver": config.receiver, "adapter": "lora", "step": step}) + "\n"))


def load_lora_receiver(run: str | Path, dtype: str | torch.dtype = "float32", device: str | torch.device = "auto"
                       ) -> LoadedModel:
    """The receiver with the LoRA adapter of a ``method: lora`` run merged in (the fine-tuned baseline)."""
    run = Path(run)
    if not (run / "lora_receiver.json").is_file():
        raise RecipeError(f"{run} is not a LoRA run folder (no lora_receiver.json); train one with "
                          "`c2c train RECIPE --method lora`")
    from peft import PeftModel
    info = json.loads((run / "lora_receiver.json").read_text())
    receiver = load_model(info["receiver"], dtype, device)
    merged = PeftModel.from_pretrained(receiver.model, run / "lora").merge_and_unload().eval()
    return LoadedModel(f"{info['receiver']}+lora", merged, receiver.tokenizer)


def load_checkpoint(folder: Path, trainable: torch.nn.Module, optimizer, scheduler, runtime: Runtime) -> int:
    if not (folder / "trainer_state.json").is_file():
        raise RecipeError(f"cannot resume: {folder} holds no checkpoint (it is written every save_every steps)")
    weights = load_file(str(folder / "trainable.safetensors"))
    named = {n: p for n, p in trainable.named_parameters() if p.requires_grad}
    if set(weights) != set(named):
        raise RecipeError(f"checkpoint {folder} does not match this recipe's trainable parameters")
    with torch.no_grad():
        for name, tensor in weights.items():
            named[name].copy_(tensor)
    state = json.loads((folder / "trainer_state.json").read_text())
    optimizer.load_state_dict(unflatten_optimizer(load_file(str(folder / "optimizer.safetensors")),
                                                  state["optimizer"], runtime.device))
    scheduler.load_state_dict(state["scheduler"])
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state["step"]


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state as safetensors-ready tensors plus JSON metadata (no pickle)."""
    state = optimizer.state_dict()
    tensors = {f"{index}.{key}": value.detach().cpu().contiguous()
               for index, entry in state["state"].items() for key, value in entry.items()}
    return tensors, {"param_groups": state["param_groups"]}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict, device: torch.device) -> dict:
    state: dict[int, dict] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor if key == "step" else tensor.to(device)
    return {"state": state, "param_groups": meta["param_groups"]}


def fit_translators(config: TrainConfig, receiver: LoadedModel | None = None,
                    sharers: list[LoadedModel] | None = None) -> Path:
    """``method: translator``: fit the pair's context translators in closed form on the recipe's texts."""
    from .fit import fit_pair, fitting_texts, split_texts, write_report
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
    output = Path(config.output)
    pair.save_pretrained(output)
    (output / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    write_report(output, report)
    return output
