"""Training objectives and their losses, over micro-batches of conversations: ``tokens`` (next-token
cross-entropy on the responses) or ``choices`` (cross-entropy of the right choice when the choices are ranked by
their cloze score, as ``c2c eval`` ranks them), optionally distilling the sharer's own ranking."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .batch import Batch
from .data import Conversation
from .pair import C2CModel
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

    @property
    def units(self) -> int:
        """What the loss is averaged over: items (choices) or response tokens."""
        return len(self.choices) if self.choices is not None else int((self.batch.labels != -100).sum())


def prepare(pair: C2CModel, conversations: list[Conversation], device: torch.device, config: TrainConfig,
            sharer_prompts: list | None = None) -> MicroBatch:
    """Tokenized, aligned batch (and, for the choice objective, its targets). ``sharer_prompts`` makes the
    sharer read other prompts; the distillation target always comes from the sharer reading the example's own."""
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


def objective_sum(pair: C2CModel, micro: MicroBatch, fuse: bool) -> torch.Tensor:
    """Sum of the loss over the micro-batch's units (the caller divides by the global count)."""
    if micro.choices is not None:
        return choice_loss_sum(choice_scores(pair, micro, fuse), micro.targets)
    with mixed_precision(pair):
        return pair(micro.batch, fuse=fuse, reduction="sum")[1]


def choice_loss_sum(scores: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of each item's target distribution under a softmax over its cloze scores, summed over
    items (with one-hot targets: the cross-entropy of the right choice)."""
    return sum(-(t * torch.log_softmax(s.float(), -1)).sum() for s, t in zip(scores, targets))
