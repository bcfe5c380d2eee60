"""Training objectives and their losses, over micro-batches of conversations: ``tokens`` (next-token
cross-entropy on the responses) or ``choices`` (cross-entropy of the right choice when the choices are ranked by
their cloze score, as ``c2c eval`` ranks them), optionally distilling the sharer's own ranking; and for a context
translator, self-distillation: KL(the receiver reading the context as text || reading it translated) at every
position after the context."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from ..data import Conversation
from ..inputs.batch import Batch
from ..inputs.context import with_context
from ..model.pair import C2CModel
from ..translator.fit import translation_examples
from .recipe import TrainConfig


def split(conversation: Conversation) -> tuple[list[dict], str]:
    """Prompt messages and the target text (the last, assistant message)."""
    return conversation.messages[:-1], conversation.messages[-1]["content"]


@dataclass
class MicroBatch:
    batch: Batch
    choices: list[list[str]] | None = None  # objective "choices": each prompt's continuations
    answers: list[int] | None = None
    targets: list[torch.Tensor] | None = None  # objective "choices": per prompt a distribution over its choices
    sharer_picks: list[int] | None = None  # when distilling: the sharer's own top choice per prompt
    teacher: Batch | None = None  # method translator: the same rows with the context as text (the teacher)
    distilled: torch.Tensor | None = None  # (B, L) bool: the predictions after the context that are distilled
    contexts: list[str] | None = None  # method translator: each row's context (the reconstruction term)

    @property
    def units(self) -> int:
        """What the loss is averaged over: items (choices), distilled positions, or response tokens."""
        if self.choices is not None:
            return len(self.choices)
        if self.distilled is not None:
            return int(self.distilled.sum())
        return int((self.batch.labels != -100).sum())


def prepare(pair: C2CModel, conversations: list[Conversation], device: torch.device, config: TrainConfig,
            sharer_prompts: list | None = None) -> MicroBatch:
    """Tokenized, aligned batch (and, for the choice objective, its targets). ``sharer_prompts`` makes the
    sharer read other prompts; the distillation target always comes from the sharer reading the example's own."""
    if config.method == "translator":
        return distillation_batch(pair, conversations, device)
    prompts, responses = zip(*(split(c) for c in conversations))
    choices = config.objective == "choices"
    # the sharers read each example's context (the fused-prompt channel); the LoRA receiver never sees it
    contexts = [c.context for c in conversations] if config.method == "c2c" and any(c.context for c in conversations) \
        else None
    batch = pair.prepare(list(prompts), None if choices else list(responses), sharer_prompts, sharer_contexts=contexts)
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


def choice_scores(pair: C2CModel, micro: MicroBatch, fuse: bool) -> list[torch.Tensor]:
    with mixed_precision(pair):
        return pair.choice_scores(micro.batch, micro.choices, fuse=fuse)


def objective_sum(pair: C2CModel, micro: MicroBatch, fuse: bool, reconstruction_weight: float = 0.0) -> torch.Tensor:
    """Sum of the loss over the micro-batch's units (the caller divides by the global count)."""
    if micro.teacher is not None:
        return distillation_sum(pair, micro, reconstruction_weight)
    if micro.choices is not None:
        return choice_loss_sum(choice_scores(pair, micro, fuse), micro.targets)
    with mixed_precision(pair):
        return pair(micro.batch, fuse=fuse, reduction="sum")[1]


def choice_loss_sum(scores: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of each item's target distribution under a softmax over its cloze scores, summed over
    items (with one-hot targets: the cross-entropy of the right choice)."""
    return sum(-(t * torch.log_softmax(s.float(), -1)).sum() for s, t in zip(scores, targets))


# --------------------------------------------------------------------------------------------- context translator
def distillation_batch(pair: C2CModel, conversations: list[Conversation], device: torch.device) -> MicroBatch:
    """The student reads each row's context translated, the teacher (fusion off) reads it as text. Both hold the
    same tokens after the context, the question and then the response, at the same columns counted from the end
    of their prompts (the question ends each prompt, the responses are right-padded after it)."""
    missing = [c.source for c in conversations if not c.context]
    if missing:
        raise ValueError(f"self-distillation needs a context in every example; {missing[0]} has none (use "
                         "benchmarks whose items carry one, e.g. synthetic-1fact or squad)")
    prompts, responses = zip(*(split(c) for c in conversations))
    contexts = [c.context for c in conversations]
    student = pair.prepare(list(prompts), list(responses), sharer_contexts=contexts, context_channel="translated")
    teacher = pair.prepare([with_context(p, c) for p, c in zip(prompts, contexts)], list(responses))
    start = max(s.end for s in student.sections if s is not None)  # the first column after every context
    width = student.input_ids.shape[1] - start
    mask = student.attention_mask[:, start:].bool()  # (B, width): the real tokens after the context
    if not bool(((student.input_ids[:, start:] == teacher.input_ids[:, -width:]) | ~mask).all()):
        raise ValueError("the teacher and the student read different tokens after the context; the chat template "
                         "changes the text around it: use chat_template: false for this receiver")
    distilled = mask[:, :-1] & mask[:, 1:]  # column t predicts t + 1: both real
    return MicroBatch(student.to(device), teacher=teacher.to(device), distilled=distilled.to(device),
                      contexts=contexts)


def distillation_sum(pair: C2CModel, micro: MicroBatch, reconstruction_weight: float = 0.0) -> torch.Tensor:
    """KL(teacher || student) of the next-token distributions, summed over the distilled positions; plus
    ``reconstruction_weight`` * (1 - R^2) of the maps against the receiver's own K/V of the contexts, per unit."""
    width = micro.distilled.shape[1] + 1
    with torch.no_grad(), mixed_precision(pair):
        teacher = pair.logits_from(micro.teacher, micro.teacher.input_ids.shape[1] - width, fuse=False)
    with mixed_precision(pair):
        student = pair.logits_from(micro.batch, micro.batch.input_ids.shape[1] - width)
    teacher, student = torch.log_softmax(teacher, -1), torch.log_softmax(student, -1)  # (B, width - 1, V)
    kl = (teacher.exp() * (teacher - student)).sum(-1)  # (B, width - 1)
    total = (kl * micro.distilled).sum()
    if reconstruction_weight:
        total = total + reconstruction_weight * micro.units * reconstruction_error(pair, micro.contexts)
    return total


def reconstruction_error(pair: C2CModel, contexts: list[str]) -> torch.Tensor:
    """1 - R^2 of the translated K/V against the receiver's own K/V of the same texts (the closed-form fit's
    objective), averaged over the sharers' receiver layers; differentiable in the maps."""
    errors = []
    for translator, sharer in zip(pair.translators, pair.sharers):
        for inputs, targets in translation_examples(pair.receiver, sharer, contexts, batch_size=len(contexts)):
            for output, target in zip(translator.map_features([x.to(pair.device) for x in inputs]), targets):
                target = target.to(output)
                errors.append(((output - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum().clamp(min=1e-12))
    return torch.stack(errors).mean()
