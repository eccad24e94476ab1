"""Refined mode: the hypernetwork's LoRA is the start, a few gradient steps on the document finish it.

The trained factors are first rebalanced (`balanced`: the same delta, A and B at equal scale). The document
becomes ttt's textbook (`textbook.py`: its pieces and sentences as chat replies to questions
and cues about them). Only the LoRA factors of the last `layers` share of the decoder are trained; the
hypernetwork's LoRA on the earlier layers stays as it was generated, so the hidden states entering the
first trained layer are computed once per batch with it applied (`anatomy.hidden_before`) and replayed at
every step (`anatomy.replay_prefix`): a step runs only the trained layers and the LM head at the replies.

Objectives: `next-token` (the reply's tokens, ttt's default) or `distill` (KL to the model reading the
document, on the same replies, plus `hard` × the next-token loss; `context_distillation.teach`).
`init=zero` starts the same factors from peft's zero LoRA instead (A random, B = 0; no hypernetwork
anywhere): the reference the hypernetwork's start is measured against.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ...documents import Document
from ...generation import sliding_window
from ..anatomy import hidden_before, replay_prefix
from ..base import Step, StepCallback
from ..context_distillation import teach
from ..packing import attention_mask_for, pack
from ..textbook import batches, build_examples, reply_loss
from ..training import PhaseClock, bfloat16_head, descend, mean_loss, precision_autocast
from .lora import Factors, _truncate, applied, unwrap

REPORT_BATCHES = 4  # batches the reported loss before/after is measured on


@dataclass(frozen=True)
class Refinement:
    """How a document's LoRA is refined (the strategy's options, gathered)."""

    layers: list[int]  # decoder layers whose LoRA factors are trained
    objective: str = "next-token"  # or "distill"
    epochs: int = 4
    lr: float = 1e-2
    batch_size: int = 8
    max_tokens: int = 96
    questions: int = 2
    hard: float = 0.5
    top_k: int = 32
    precision: str = "auto"
    init: str = "hypernet"  # or "zero"
    seed: int = 0


@dataclass
class Refined:
    factors: Factors
    before: float  # mean loss of the start, on up to REPORT_BATCHES batches
    after: float
    steps: int
    phase_seconds: dict[str, float]


def layer_of(name: str) -> int:
    return int(name.split("layers.")[1].split(".")[0])


def zero_start(model, start: Factors, generator: torch.Generator) -> Factors:
    """peft's start at the same shapes: A ~ N(0, 1/d_in), B = 0 (the LoRA changes nothing)."""
    out = {}
    for name, (a, b) in start.items():
        d_in = a.shape[1]
        out[name] = ((torch.randn(a.shape, generator=generator) / math.sqrt(d_in)).to(a), torch.zeros_like(b))
    return out


def balanced(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same delta B·A (up to rounding) with A and B of equal scale, √σ each (its SVD): the hypernetwork's A
    rows are divided by the module's input norm (up to 130) and its B columns multiplied by the output norm, a
    split under which one learning rate is far too large for A and too small for B."""
    a, b = _truncate(a.detach(), b.detach(), a.shape[0])
    return a.clone(), b.clone()


def refine(model, tokenizer, document: Document, start: Factors, r: Refinement, on_step: StepCallback, clock: PhaseClock | None = None) -> Refined:
    """`start` (every module's factors) with the factors of `r.layers` trained on the document.

    Call it with the session's adapter off: the teacher, the frozen layers and the steps see the base model
    plus `start` only."""
    clock = clock or PhaseClock()
    base = unwrap(model)
    if r.init == "zero":
        start = zero_start(model, start, torch.Generator().manual_seed(r.seed))
    pick = (lambda a, b: (a.clone(), b.clone())) if r.init == "zero" else balanced  # B = 0 has no balanced form but zeros
    trained = {n: pick(a, b) for n, (a, b) in start.items() if layer_of(n) in r.layers}
    fixed = {n: f for n, f in start.items() if n not in trained}
    first = min(layer_of(n) for n in trained)
    with clock("examples"):
        data = _batches(base, tokenizer, document, r, clock)
    with clock("frozen layers"), _precision(base, r.precision), applied(base, fixed):
        for b in data:
            mask = attention_mask_for(base, b["attention_mask"], base.dtype)
            b["hidden"] = hidden_before(base, first, b["input_ids"], mask, b.get("position_ids"))

    head = bfloat16_head(base, r.precision)

    def loss_fn(batch: dict) -> torch.Tensor:
        with _precision(base, r.precision), applied(base, trained), replay_prefix(base, first, batch["hidden"]) if batch["hidden"] is not None else nullcontext():
            return reply_loss(base, batch, r.hard, head)

    with clock("loss before/after"):
        before = mean_loss(data, loss_fn, at_most=REPORT_BATCHES)
    params = [t for pair in trained.values() for t in pair]
    steps, _ = descend(
        "doc2lora", params, data, loss_fn, epochs=r.epochs, lr=r.lr, weight_decay=0.0, max_grad_norm=1.0, seed=r.seed,
        on_step=lambda s: on_step(Step(s.i, s.total, s.loss, phase="refinement")), clock=clock,
    )  # fmt: skip
    with clock("loss before/after"):
        after = mean_loss(data, loss_fn, at_most=REPORT_BATCHES)
    factors = fixed | {n: (a.detach(), b.detach()) for n, (a, b) in trained.items()}
    return Refined({n: factors[n] for n in start}, before, after, steps, clock.seconds())


def _batches(model, tokenizer, document: Document, r: Refinement, clock: PhaseClock) -> list[dict]:
    """The document's textbook as packed batches on the model's device (with teacher targets when distilling)."""
    examples = [e for e in build_examples(document, tokenizer, fmt="chat", max_tokens=r.max_tokens, questions_per_sentence=r.questions) if e.reply]
    if r.objective == "distill":
        with clock("teacher"):
            for example, teacher in zip(examples, teach(model, tokenizer, document.text, [(e.user, e.reply) for e in examples], top_k=r.top_k)):
                example.teacher = teacher
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    window = getattr(model.config, "sliding_window", None) if sliding_window(model) else None
    return [{k: v.to(model.device) for k, v in pack(b, window).items()} for b in batches(examples, r.batch_size, pad)]


def _precision(model, precision: str):
    return precision_autocast(precision, model.device)

