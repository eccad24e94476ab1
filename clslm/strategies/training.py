"""The gradient-descent loop shared by the strategies that train their own parameters."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from ..errors import TrainingDiverged
from ..machine import fast_bfloat16
from .base import Step, StepCallback

MAX_BAD_STEPS = 5


def descend(
    name: str,
    params: list[torch.nn.Parameter],
    data: list[dict],
    loss_fn: Callable[[dict], torch.Tensor],
    *,
    epochs: int,
    lr: float,
    weight_decay: float,
    max_grad_norm: float,
    seed: int,
    on_step: StepCallback,
    clock: "PhaseClock | None" = None,
) -> tuple[int, int]:
    """AdamW over `data` for `epochs`, batches shuffled per epoch from `seed`; returns (steps, skipped).

    Gradients are clipped to `max_grad_norm`; a non-finite loss is skipped, MAX_BAD_STEPS of them in a
    row abort (TrainingDiverged) so the caller saves nothing.
    """
    timed = clock or PhaseClock()
    rng = random.Random(seed)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total, step, bad, skipped = epochs * len(data), 0, 0, 0
    try:
        for _ in range(epochs):
            for batch in rng.sample(data, len(data)):
                step += 1
                with timed("forward"):
                    loss = loss_fn(batch)
                optimizer.zero_grad(set_to_none=True)
                if not torch.isfinite(loss):
                    bad += 1
                    skipped += 1
                    if bad >= MAX_BAD_STEPS:
                        raise TrainingDiverged(f"{name}: {bad} non-finite losses in a row; lower -o lr (now {lr})")
                    continue
                bad = 0
                with timed("backward"):
                    loss.backward()
                with timed("optimizer"):
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                    optimizer.step()
                on_step(Step(step, total, loss.item()))
    finally:
        for p in params:
            p.requires_grad_(False)
    return step, skipped


class PhaseClock:
    """Wall seconds spent in named phases of a learn (`with clock("teacher"): ...`), for --json and profiles."""

    def __init__(self):
        self._seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[phase] = self._seconds.get(phase, 0.0) + time.perf_counter() - start

    def seconds(self) -> dict[str, float]:
        return {k: round(v, 2) for k, v in self._seconds.items()}


def mean_loss(data: list[dict], loss_fn: Callable[[dict], torch.Tensor], at_most: int | None = None) -> float:
    """Mean finite loss over `data` (or `at_most` of its batches, evenly spaced), without gradients (NaN when
    none is finite)."""
    if at_most:
        data = data[:: max(1, math.ceil(len(data) / at_most))]
    with torch.no_grad():
        losses = [float(loss_fn(b)) for b in data]
    finite = [x for x in losses if math.isfinite(x)]
    return round(sum(finite) / len(finite), 4) if finite else float("nan")


def precision_autocast(precision: str, device: torch.device):
    """bfloat16 autocast for training passes where asked, or (auto) where this device multiplies bfloat16
    natively; the trained weights and the answers stay float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bfloat16(precision, device))


def uses_bfloat16(precision: str, device: torch.device) -> bool:
    return precision == "bfloat16" or (precision == "auto" and fast_bfloat16(device))


def bfloat16_head(model, precision: str) -> torch.Tensor | None:
    """The LM head's weight in bfloat16, cast once for a learn, where training runs in bfloat16 (else None).

    Autocast would cast the whole head (vocabulary × hidden) again at every step; with it `reply_loss` also
    takes the softmax in bfloat16 (see there)."""
    if not uses_bfloat16(precision, model.device):
        return None
    return model.get_output_embeddings().weight.detach().to(torch.bfloat16)
