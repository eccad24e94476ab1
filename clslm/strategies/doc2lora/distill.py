"""Context distillation targets and loss: the model with the document in its prompt is the teacher, the
model without it (plus a LoRA) the student, and the loss is their KL divergence over every reply token.

A `Probe` is one exchange: the student sees `student` as the user message; the teacher sees the document,
then `teacher`; both are scored on the same `reply` tokens. For a question the teacher's text is the
bench's `Question: …` and the student's the bare question, as `clslm ask` sends it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .lora import unwrap
from .reading import Reading, Template, cache_kwarg, cache_of, capturing, ids, reading


@dataclass(frozen=True)
class Probe:
    student: str
    teacher: str
    reply: str


def question_probe(question: str, answer: str) -> Probe:
    return Probe(question, f"Question: {question}", answer)


@dataclass
class Targets:
    """The teacher's reply distributions for a list of probes, and the student's token ids."""

    student_ids: list[list[int]]  # prompt + reply, per probe
    reply_lengths: list[int]
    teacher_logprobs: list[torch.Tensor]  # (reply tokens, vocab) per probe, float32
    reading: Reading | None = None  # the document as the hypernetwork sees it, when asked for


@torch.no_grad()
def teach(model, tokenizer, prefix: list[int], document: list[int], probes: list[Probe], read_as: tuple[list[int], list[str]] | None = None) -> Targets:
    """Run the teacher once over prefix + document (KV cache), then each probe's continuation on a copy.

    With read_as=(layers, module names) the same pass also yields the document's Reading.
    """
    template, device = Template.of(tokenizer), unwrap(model).device
    with capturing(model, read_as[1] if read_as else []) as seen:
        out = model(input_ids=torch.tensor([prefix + document], device=device), use_cache=True, output_hidden_states=read_as is not None, logits_to_keep=1)
    doc_reading = reading(model, out.hidden_states, seen, len(prefix), document, *read_as) if read_as else None
    student_ids, lengths, teacher = [], [], []
    for probe in probes:
        reply = ids(tokenizer, probe.reply)
        continuation = ids(tokenizer, "\n\n" + probe.teacher + template.tail) + reply
        cache = copy.deepcopy(cache_of(out))
        logits = model(input_ids=torch.tensor([continuation], device=device), use_cache=True, **cache_kwarg(model, cache)).logits
        teacher.append(F.log_softmax(logits[0, len(continuation) - len(reply) - 1 : -1].float(), dim=-1))
        student_ids.append(ids(tokenizer, template.head + probe.student + template.tail) + reply)
        lengths.append(len(reply))
    return Targets(student_ids, lengths, teacher, doc_reading)


def kl_loss(model, targets: Targets, pad_id: int) -> torch.Tensor:
    """Mean over reply tokens of KL(teacher ‖ student), the student run on its own prompts (one batch).

    Left padding with explicit positions puts every reply at the end of its row, so the LM head runs
    only over the last few positions instead of the whole batch (a quarter of a 135M model's compute).
    """
    device = unwrap(model).device
    width, keep = max(len(s) for s in targets.student_ids), max(targets.reply_lengths) + 1
    input_ids = torch.full((len(targets.student_ids), width), pad_id, device=device)
    mask = torch.zeros_like(input_ids)
    for row, seq in enumerate(targets.student_ids):
        input_ids[row, width - len(seq) :] = torch.tensor(seq, device=device)
        mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep).logits
    total, count = logits.new_zeros((), dtype=torch.float32), 0
    for row, n in enumerate(targets.reply_lengths):
        if n == 0:
            continue
        student = F.log_softmax(logits[row, keep - n - 1 : keep - 1].float(), dim=-1)
        teacher = targets.teacher_logprobs[row].to(device)
        total = total + (teacher.exp() * (teacher - student)).sum()
        count += n
    return total / max(count, 1)
