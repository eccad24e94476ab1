"""What a benchmark run measures: its settings, the result dataclasses (the --json objects and the CSV
rows), the metrics (gain recovery, forgetting) and the scoring of a trial's answers. bench.py runs the
strategies and hands their answers here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .machine import machine_info, peak_rss_mb
from .models import DEFAULT_MODEL
from .scoring import accuracy, contains_answer, mean_f1, strict_accuracy, strict_answer


@dataclass
class BenchSettings:
    """What every strategy in a run shares: model, mode, decoding budget, device."""

    model: str = DEFAULT_MODEL
    mode: Literal["sequential", "independent"] = "sequential"
    max_new_tokens: int = 40  # facts questions (greedy)
    general_max_new_tokens: int = 24
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class Reference:
    """Strategy-independent answers: one per facts question (file order) and per general question."""

    base: list[str]
    in_context: list[str]
    general: list[str]
    general_nll: list[float]
    doc_tokens: list[int]  # model tokens per document


@dataclass
class QuestionRow:
    """One facts question with its three answers (the --out CSV)."""

    doc_id: str
    question: str
    answers: list[str]
    base: str
    in_context: str
    learned: str
    base_hit: bool
    in_context_hit: bool
    learned_hit: bool
    base_strict: bool  # scoring.strict_answer
    in_context_strict: bool
    learned_strict: bool


@dataclass
class BenchResult:
    """One strategy's figures; asdict() is the `clslm bench --json` object. Per-question rows: .rows."""

    strategy: str
    options: dict[str, str]  # the -o options it ran with (a mode such as doc2lora's "simulated" shows here)
    model: str
    mode: str
    docs: int
    questions: int
    accuracy: dict[str, float]  # base, in_context, learned (answer-contains)
    strict_accuracy: dict[str, float]  # the same, strict: no other answer of its kind first, no take-back
    f1: dict[str, float]
    gain_recovery: float | None
    general: dict[str, Any]  # questions, before, after, nll_before, nll_after
    forgetting: float | None
    retention: dict[str, float | None]  # first_doc_right_after, first_doc_after_all (sequential only)
    learn_seconds: float
    learn_seconds_per_1k_tokens: float
    ask_seconds_mean: float
    peak_rss_mb: float | None  # the process's high-water mark (shared by every strategy of a compare run)
    state_mb_per_doc: float
    machine: dict[str, Any]

    def __post_init__(self) -> None:
        self.rows: list[QuestionRow] = []  # an attribute, not a field: kept out of asdict()


@dataclass
class Unavailable:
    """A strategy a compare run could not measure (not implemented yet, or failed)."""

    strategy: str
    status: str  # "not implemented" | "failed"
    message: str


@dataclass
class Comparison:
    """Several strategies on the same documents, questions and model."""

    model: str
    mode: str
    docs: int
    questions: int
    reference: dict[str, Any]  # accuracy/strict_accuracy/f1 of base and in_context, general before
    strategies: list[BenchResult | Unavailable]
    machine: dict[str, Any]


@dataclass
class Trial:
    """What learning produced, before scoring."""

    learned: list[str] = field(default_factory=list)
    first_right_after: list[str] = field(default_factory=list)
    first_after_all: list[str] | None = None
    general: list[str] = field(default_factory=list)
    general_nll: list[float] = field(default_factory=list)
    learn_seconds: float = 0.0
    ask_seconds: list[float] = field(default_factory=list)
    state_bytes: list[int] = field(default_factory=list)


# ---- arithmetic ------------------------------------------------------------------------------------
def gain_recovery(base: float, in_context: float, learned: float) -> float | None:
    """Share of the in-context gain that learning recovers; None when reading gains nothing."""
    return None if in_context == base else (learned - base) / (in_context - base)


def forgetting(before: float | None, after: float | None) -> float | None:
    """Relative loss of general accuracy; None when there is nothing to lose."""
    return None if not before or after is None else (before - after) / before


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


# ---- scoring -------------------------------------------------------------------------------------------
def _score(strategy, options, facts, general, settings, reference: Reference, trial: Trial) -> BenchResult:
    answers, questions = [qa.answers for doc in facts for qa in doc.qa], [qa.question for doc in facts for qa in doc.qa]
    runs = {"base": reference.base, "in_context": reference.in_context, "learned": trial.learned}
    acc = {k: accuracy(v, answers) for k, v in runs.items()}
    first = answers[: len(facts[0].qa)]
    general_summary = _general_summary(general, reference, trial)
    tokens = sum(reference.doc_tokens)
    result = BenchResult(
        strategy=strategy,
        options=dict(options),
        model=settings.model,
        mode=settings.mode,
        docs=len(facts),
        questions=len(answers),
        accuracy={k: _round(v) for k, v in acc.items()},
        strict_accuracy={k: _round(strict_accuracy(v, answers, questions)) for k, v in runs.items()},
        f1={k: _round(mean_f1(v, answers)) for k, v in runs.items()},
        gain_recovery=_round(gain_recovery(acc["base"], acc["in_context"], acc["learned"])),
        general=general_summary,
        forgetting=_round(forgetting(general_summary["before"], general_summary["after"])),
        retention={
            "first_doc_right_after": _round(accuracy(trial.first_right_after, first)),
            "first_doc_after_all": _round(accuracy(trial.first_after_all, first)) if trial.first_after_all is not None else None,
        },
        learn_seconds=round(trial.learn_seconds, 2),
        learn_seconds_per_1k_tokens=round(trial.learn_seconds / max(tokens, 1) * 1000, 2),
        ask_seconds_mean=round(_mean(trial.ask_seconds), 3),
        peak_rss_mb=peak_rss_mb(),
        state_mb_per_doc=round(sum(trial.state_bytes) / 1e6 / len(facts), 4),
        machine=machine_info(settings.device, settings.dtype),
    )
    result.rows = _rows(facts, reference, trial)
    return result


def _reference_summary(facts, general, reference: Reference) -> dict[str, Any]:
    answers, questions = [qa.answers for doc in facts for qa in doc.qa], [qa.question for doc in facts for qa in doc.qa]
    runs = {"base": reference.base, "in_context": reference.in_context}
    return {
        "accuracy": {k: _round(accuracy(v, answers)) for k, v in runs.items()},
        "strict_accuracy": {k: _round(strict_accuracy(v, answers, questions)) for k, v in runs.items()},
        "f1": {k: _round(mean_f1(v, answers)) for k, v in runs.items()},
        "general": {k: v for k, v in _general_summary(general, reference, None).items() if not k.endswith("after")},
    }


def _general_summary(general, reference: Reference, trial: Trial | None) -> dict[str, Any]:
    answers = [g.answers for g in general]
    if not general:
        return {"questions": 0, "before": None, "after": None, "nll_before": None, "nll_after": None}
    return {
        "questions": len(general),
        "before": _round(accuracy(reference.general, answers)),
        "after": _round(accuracy(trial.general, answers)) if trial else None,
        "nll_before": _round(_mean(reference.general_nll)),
        "nll_after": _round(_mean(trial.general_nll)) if trial else None,
    }


def _rows(facts, reference: Reference, trial: Trial) -> list[QuestionRow]:
    pairs = [(doc, qa) for doc in facts for qa in doc.qa]
    rows = []
    for (doc, qa), base, read, learned in zip(pairs, reference.base, reference.in_context, trial.learned, strict=True):
        hits = [contains_answer(x, list(qa.answers)) for x in (base, read, learned)]
        strict = [strict_answer(x, list(qa.answers), qa.question) for x in (base, read, learned)]
        rows.append(QuestionRow(doc.id, qa.question, list(qa.answers), base, read, learned, *hits, *strict))
    return rows
