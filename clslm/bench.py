"""Benchmark a strategy: how much it learns, how much it forgets, what it costs.

For the same questions about each facts-set document:
  base        question only, learned state off (the bare model)
  in_context  the document in the prompt, learned state off (what the model reaches when it can read)
  learned     question only, after learning
gain_recovery = (learned − base) / (in_context − base); forgetting = (before − after) / before on a
general-knowledge set, with the mean NLL of its accepted answers as a smooth companion.

`base`, `in_context` and the general set before learning do not depend on the strategy: run_reference()
computes them once, and run_compare() shares them across strategies. Nothing here prints: progress goes
through `progress(phase, done, total)`.
"""

from __future__ import annotations

import math
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import registry
from .benchdata import FactsDoc, GeneralQuestion
from .documents import Document
from .errors import ClslmError, InputError, StrategyNotImplemented
from .machine import machine_info, peak_rss_mb
from .models import DEFAULT_MODEL
from .options import parse_key_values
from .scoring import accuracy, contains_answer, mean_f1, strict_accuracy, strict_answer

from .generation import READ_INSTRUCTION as FACTS_INSTRUCTION
Progress = Callable[[str, int, int], None]  # (phase, done, total)


def no_progress(phase: str, done: int, total: int) -> None:
    pass


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
class _Trial:
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


# ---- running -----------------------------------------------------------------------------------------
def run_reference(facts: list[FactsDoc], general: list[GeneralQuestion], settings: BenchSettings, progress: Progress = no_progress) -> Reference:
    """Base and in-context answers to every facts question, and the general set, on the bare model."""
    from .generation import SharedPrefix, chat_prompt, count_tokens, generate, user_message
    from .likelihood import answer_nll
    from .models import load_model, resolve_model

    model, tokenizer = load_model(resolve_model(settings.model), device=settings.device, dtype=settings.dtype)
    pairs = [(doc, qa) for doc in facts for qa in doc.qa]
    budget = settings.max_new_tokens

    readers = {doc.id: SharedPrefix(model, tokenizer, [chat_prompt(tokenizer, user_message(f"Question: {qa.question}", _reading(doc))) for qa in doc.qa]) for doc in facts}

    def in_context(pair):
        doc, qa = pair
        return generate(model, tokenizer, f"Question: {qa.question}", context=_reading(doc), max_new_tokens=budget, deltas=False, shared=readers[doc.id])

    base, _ = _answer_each(lambda p: generate(model, tokenizer, p[1].question, max_new_tokens=budget, deltas=False), pairs, "base", progress)
    read, _ = _answer_each(in_context, pairs, "in context", progress)
    general_budget = settings.general_max_new_tokens
    before, _ = _answer_each(lambda g: generate(model, tokenizer, g.question, max_new_tokens=general_budget, deltas=False), general, "general before", progress)
    nll = [answer_nll(model, tokenizer, g.question, g.answers[0]) for g in general]
    return Reference(base, read, before, nll, [count_tokens(tokenizer, doc.document) for doc in facts])


def _reading(doc: FactsDoc) -> str:
    """What the reader sees above the question in the in-context setting."""
    return f"{FACTS_INSTRUCTION}\n\n{doc.document}"


def run_bench(
    strategy: str,
    facts: list[FactsDoc],
    general: list[GeneralQuestion],
    settings: BenchSettings | None = None,
    options: dict[str, str] | None = None,
    *,
    reference: Reference | None = None,
    progress: Progress = no_progress,
) -> BenchResult:
    """Learn the facts documents with `strategy`, answer their questions, measure forgetting and cost."""
    settings = settings or BenchSettings()
    check_strategy(strategy, options or {})
    if not facts:
        raise InputError("nothing to benchmark: the facts set is empty")
    reference = reference or run_reference(facts, general, settings, progress)
    run = _independent if settings.mode == "independent" else _sequential
    trial = run(strategy, facts, general, settings, options or {}, progress)
    return _score(strategy, options or {}, facts, general, settings, reference, trial)


def run_compare(
    strategies: list[str],
    facts: list[FactsDoc],
    general: list[GeneralQuestion],
    settings: BenchSettings | None = None,
    options: dict[str, dict[str, str]] | None = None,
    *,
    progress: Progress = no_progress,
) -> Comparison:
    """run_bench for each strategy with one shared reference; unimplemented or failing ones are reported, not raised.

    A strategy may be a variant, NAME[KEY=VALUE,...] (see variant()): its own options override `options[NAME]`,
    and the label names its row.
    """
    settings, options = settings or BenchSettings(), options or {}
    missing = {}
    for label in strategies:  # check every name and option before the long work starts
        name, own = variant(label)
        try:
            check_strategy(name, {**options.get(name, {}), **own})
        except StrategyNotImplemented as e:
            missing[label] = Unavailable(label, "not implemented", str(e))
    reference = run_reference(facts, general, settings, progress)

    def measure(label: str) -> BenchResult | Unavailable:
        name, own = variant(label)
        try:
            result = run_bench(name, facts, general, settings, {**options.get(name, {}), **own}, reference=reference, progress=progress)
        except Exception as e:  # one broken strategy must not cost the others' figures
            return Unavailable(label, "failed", str(e) if isinstance(e, ClslmError) else f"{type(e).__name__}: {e}")
        result.strategy = label
        return result

    entries = [missing.get(label) or measure(label) for label in strategies]
    questions = sum(len(doc.qa) for doc in facts)
    summary = _reference_summary(facts, general, reference)
    return Comparison(settings.model, settings.mode, len(facts), questions, summary, entries, machine_info(settings.device, settings.dtype))


def variant(label: str) -> tuple[str, dict[str, str]]:
    """'ttt[neurons=0,questions=0]' → ('ttt', {'neurons': '0', 'questions': '0'}); a plain name has no options."""
    match = re.fullmatch(r"\s*([\w-]+)\s*(?:\[([^\]]*)\])?\s*", label)
    if not match:
        raise InputError(f"strategy {label!r}: write NAME or NAME[KEY=VALUE,...]")
    items = filter(None, (part.strip() for part in (match.group(2) or "").split(",")))
    return match.group(1), parse_key_values(items, context=f"strategy {label!r}")


def check_strategy(name: str, options: dict[str, str]) -> None:
    """Fail before any long work: unknown / unimplemented strategy, bad -o options."""
    from .strategies.base import parse_options

    parse_options(registry.get(name).Config, options)


@contextmanager
def _fresh_session(strategy: str, settings: BenchSettings, options: dict[str, str]) -> Iterator[Any]:
    """A new session in a temporary directory, model loaded (so load time is not learn time)."""
    from .session import Session

    with tempfile.TemporaryDirectory(prefix="clslm-bench-") as tmp:
        session = Session.create(Path(tmp) / "session", model=settings.model, strategy=strategy, options=options, device=settings.device, dtype=settings.dtype)
        with session:
            session.strategy()
            yield session


def _sequential(strategy, facts, general, settings, options, progress) -> _Trial:
    """One session learns every document in order, then answers every question (the real use)."""
    trial = _Trial()
    with _fresh_session(strategy, settings, options) as session:
        for i, doc in enumerate(facts):
            trial.learn_seconds += _learn(session, doc, f"{strategy}: learning {doc.id} ({i + 1}/{len(facts)})", progress)
            if i == 0:
                trial.first_right_after, _ = _ask_all(session, list(doc.qa), settings.max_new_tokens, f"{strategy}: {doc.id} right after", progress)
        pairs = [qa for doc in facts for qa in doc.qa]
        trial.learned, trial.ask_seconds = _ask_all(session, pairs, settings.max_new_tokens, f"{strategy}: answering", progress)
        trial.first_after_all = trial.learned[: len(facts[0].qa)]
        _general_after(session, general, settings, f"{strategy}: general after", progress, trial)
        trial.state_bytes = [session.state_bytes()]
    return trial


def _independent(strategy, facts, general, settings, options, progress) -> _Trial:
    """A fresh session per document; the general set is measured after the last one."""
    trial = _Trial()
    for i, doc in enumerate(facts):
        with _fresh_session(strategy, settings, options) as session:
            trial.learn_seconds += _learn(session, doc, f"{strategy}: learning {doc.id} ({i + 1}/{len(facts)})", progress)
            answers, seconds = _ask_all(session, list(doc.qa), settings.max_new_tokens, f"{strategy}: answering {doc.id}", progress)
            trial.learned += answers
            trial.ask_seconds += seconds
            trial.state_bytes.append(session.state_bytes())
            if i == 0:
                trial.first_right_after = answers
            if i == len(facts) - 1:
                _general_after(session, general, settings, f"{strategy}: general after", progress, trial)
    return trial


def _learn(session, doc: FactsDoc, phase: str, progress: Progress) -> float:
    start = time.perf_counter()
    session.learn([Document(doc.id, doc.document)], on_step=lambda step: progress(phase, step.i, step.total))
    return time.perf_counter() - start


def _ask_all(session, items: list, max_new_tokens: int, phase: str, progress: Progress) -> tuple[list[str], list[float]]:
    return _answer_each(lambda item: session.ask(item.question, max_new_tokens=max_new_tokens), items, phase, progress)


def _answer_each(answer: Callable, items: list, phase: str, progress: Progress) -> tuple[list[str], list[float]]:
    """(answer texts, wall seconds per answer), advancing the phase's progress bar."""
    texts, seconds = [], []
    progress(phase, 0, len(items))
    for i, item in enumerate(items, start=1):
        start = time.perf_counter()
        texts.append(answer(item).text)
        seconds.append(time.perf_counter() - start)
        progress(phase, i, len(items))
    return texts, seconds


def _general_after(session, general, settings, phase, progress, trial: _Trial) -> None:
    trial.general, _ = _answer_each(lambda g: session.ask(g.question, max_new_tokens=settings.general_max_new_tokens), general, phase, progress)
    strategy = session.strategy()
    trial.general_nll = [strategy.answer_nll(g.question, g.answers[0]) for g in general]


# ---- scoring -------------------------------------------------------------------------------------------
def _score(strategy, options, facts, general, settings, reference: Reference, trial: _Trial) -> BenchResult:
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


def _general_summary(general, reference: Reference, trial: _Trial | None) -> dict[str, Any]:
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


def _rows(facts, reference: Reference, trial: _Trial) -> list[QuestionRow]:
    pairs = [(doc, qa) for doc in facts for qa in doc.qa]
    rows = []
    for (doc, qa), base, read, learned in zip(pairs, reference.base, reference.in_context, trial.learned, strict=True):
        hits = [contains_answer(x, list(qa.answers)) for x in (base, read, learned)]
        strict = [strict_answer(x, list(qa.answers), qa.question) for x in (base, read, learned)]
        rows.append(QuestionRow(doc.id, qa.question, list(qa.answers), base, read, learned, *hits, *strict))
    return rows
