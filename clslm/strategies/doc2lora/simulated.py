"""Simulated mode: the LoRA a hypernetwork would emit, found instead by gradient context distillation.

This is the slow, exact counterpart that a trained hypernetwork amortises: a fresh rank-r LoRA is fitted
by a few Adam steps so that the model without the document matches the model with the document in its
prompt, on probes made from the document itself (each probe: the first part of a sentence, asking for
the rest; KL over the rest's tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ...documents import split_sentences
from .distill import Probe, Targets, kl_loss, teach
from .lora import Factors, applied, unwrap

PROMPT = "Complete this sentence from the document: {head}"


def sentence_probes(text: str, limit: int) -> list[Probe]:
    """Up to `limit` sentences spread evenly over the document, each cut after its first words."""
    sentences = [s for s in split_sentences(text) if len(s.split()) >= 4]
    if len(sentences) > limit:
        step = len(sentences) / limit
        sentences = [sentences[int(i * step)] for i in range(limit)]
    probes = []
    for sentence in sentences:
        words = sentence.split()
        cut = max(2, min(len(words) - 2, round(len(words) * 0.4)))
        prompt = PROMPT.format(head=" ".join(words[:cut]))
        probes.append(Probe(prompt, prompt, " ".join(words[cut:])))
    return probes


def fresh_factors(model, names: list[str], rank: int, generator: torch.Generator) -> Factors:
    """A ~ N(0, 1/d_in), B = 0 (peft's default start: the LoRA changes nothing), trainable, fp32."""
    factors = {}
    for name in names:
        weight = unwrap(model).get_submodule(name).weight
        d_out, d_in = weight.shape
        a = (torch.randn(rank, d_in, generator=generator) / math.sqrt(d_in)).to(weight.device).requires_grad_(True)
        b = torch.zeros(d_out, rank, device=weight.device, requires_grad=True)
        factors[name] = (a, b)
    return factors


def distill(model, tokenizer, targets: Targets, factors: Factors, *, steps: int, lr: float, on_step: Callable[[int, float], None]) -> tuple[float, float]:
    """Fit `factors` in place to `targets`; (KL before, KL after)."""
    params = [t for pair in factors.values() for t in pair]
    optimizer = torch.optim.Adam(params, lr=lr)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with applied(model, factors):
        for step in range(steps):
            loss = kl_loss(model, targets, pad)
            if step == 0:
                before = float(loss.detach())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            on_step(step + 1, float(loss.detach()))
        with torch.no_grad():
            after = float(kl_loss(model, targets, pad))
    for t in params:
        t.requires_grad_(False)
    return before, after


def simulate(model, tokenizer, prefix: list[int], document: list[int], text: str, names: list[str], *, rank: int, steps: int, lr: float, probes: int, seed: int, on_step) -> tuple[Factors, float, float]:
    """A LoRA for one document by context distillation: (factors, KL before, KL after)."""
    targets = teach(model, tokenizer, prefix, document, sentence_probes(text, probes))
    factors = fresh_factors(model, names, rank, torch.Generator().manual_seed(seed))
    if not targets.student_ids:
        return {k: (a.detach(), b.detach()) for k, (a, b) in factors.items()}, 0.0, 0.0
    before, after = distill(model, tokenizer, targets, factors, steps=steps, lr=lr, on_step=on_step)
    return {k: (a.detach(), b.detach()) for k, (a, b) in factors.items()}, before, after
