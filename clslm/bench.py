"""Benchmark a strategy: how much it learns, how much it forgets, what it costs.

For the same questions about each facts-set document:
  base        question only, learned state off (the bare model)
  in_context  the document in the prompt, learned state off (what the model reaches when it can read)
  learned     question only, after learning
gain_recovery = (learned − base) / (in_context − base); forgetting = (before − after) / before on a
general-knowledge set, with the mean NLL of its accepted answers as a smooth companion.

`base`, `in_context` and the general set before learning do not depend on the strategy: run_reference()
computes them once, and run_compare() shares them across strategies. Nothing here prints: progress goes
through `progress(phase, done, total)`. The runners are here; the settings, result dataclasses, metrics
and scoring are in bench_results.py.
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import registry
from .bench_results import BenchResult, BenchSettings, Comparison, Reference, Trial, Unavailable, _reference_summary, _score
from .benchdata import FactsDoc, GeneralQuestion
from .documents import Document
from .errors import ClslmError, InputError, StrategyNotImplemented
from .generation import READ_INSTRUCTION as FACTS_INSTRUCTION
from .machine import machine_info
from .options import parse_key_values

Progress = Callable[[str, int, int], None]  # (phase, done, total)


def no_progress(phase: str, done: int, total: int) -> None:
    pass


# ---- running -----------------------------------------------------------------------------------------
def run_reference(facts: list[FactsDoc], general: list[GeneralQuestion], settings: BenchSettings, progress: Progress = no_progress) -> Reference:
    """Base and in-context answers to every facts question, and the general set, on the bare model.

    Greedy answers in left-padded batches (the same answers as one at a time, tests/test_batched.py); each
    document is read once for its questions (its KV cache shared)."""
    from .generation import SharedPrefix, chat_prompt, count_tokens, generate_batch, user_message
    from .likelihood import answer_nll
    from .models import load_model, resolve_model

    model, tokenizer = load_model(resolve_model(settings.model), device=settings.device, dtype=settings.dtype)

    def batch(questions, phase, offset=0, total=None, **kw) -> list[str]:
        total = total or len(questions)
        tick = lambda done: progress(phase, offset + done, total)  # noqa: E731
        return [a.text for a in generate_batch(model, tokenizer, questions, deltas=False, progress=tick, **kw)]

    budget, questions = settings.max_new_tokens, sum(len(doc.qa) for doc in facts)
    progress("base", 0, questions)
    base = batch([qa.question for doc in facts for qa in doc.qa], "base", max_new_tokens=budget)
    read: list[str] = []
    progress("in context", 0, questions)
    for doc in facts:
        asked = [f"Question: {qa.question}" for qa in doc.qa]
        shared = SharedPrefix(model, tokenizer, [chat_prompt(tokenizer, user_message(q, _reading(doc))) for q in asked])
        read += batch(asked, "in context", len(read), questions, contexts=[_reading(doc)] * len(asked), shared=shared, max_new_tokens=budget)
    progress("general before", 0, len(general))
    before = batch([g.question for g in general], "general before", max_new_tokens=settings.general_max_new_tokens)
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
    from .strategies.config import parse_options

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


def _sequential(strategy, facts, general, settings, options, progress) -> Trial:
    """One session learns every document in order, then answers every question (the real use): the first
    document's one at a time right after it is learned, all of them at the end in batches where the strategy
    answers a group alike (strategy_answers: the same answers as one at a time)."""
    trial = Trial()
    with _fresh_session(strategy, settings, options) as session:
        for i, doc in enumerate(facts):
            trial.learn_seconds += _learn(session, doc, f"{strategy}: learning {doc.id} ({i + 1}/{len(facts)})", progress)
            if i == 0:  # one at a time, as `clslm ask` answers: these give the seconds per question
                trial.first_right_after, trial.ask_seconds = _ask_all(session, list(doc.qa), settings.max_new_tokens, f"{strategy}: {doc.id} right after", progress)
        if len(facts) == 1:  # nothing was learned after it: its answers right after are the final ones
            trial.learned = list(trial.first_right_after)
        else:
            questions = [qa.question for doc in facts for qa in doc.qa]
            trial.learned = strategy_answers(session.strategy(), questions, settings.max_new_tokens, f"{strategy}: answering", progress)
        trial.first_after_all = trial.learned[: len(facts[0].qa)]
        _general_after(session, general, settings, f"{strategy}: general after", progress, trial)
        trial.state_bytes = [session.state_bytes()]
    return trial


def _independent(strategy, facts, general, settings, options, progress) -> Trial:
    """A fresh session per document; the general set is measured after the last one."""
    trial = Trial()
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


def _general_after(session, general, settings, phase, progress, trial: Trial) -> None:
    strategy = session.strategy()
    trial.general = strategy_answers(strategy, [g.question for g in general], settings.general_max_new_tokens, phase, progress)
    trial.general_nll = [strategy.answer_nll(g.question, g.answers[0]) for g in general]


def strategy_answers(strategy, questions: list[str], max_new_tokens: int, phase: str = "", progress: Progress = no_progress) -> list[str]:
    """The strategy's answers to `questions`: each group of questions it answers alike
    (Strategy.answer_group: the same routing; each question's own context and row-wise logits processors) in batches under that
    routing, the others one at a time through answer(). The same answers as answer() for each."""
    from .generation import generate_batch

    groups: dict = {}
    for i, question in enumerate(questions):
        groups.setdefault(strategy.answer_group(question), []).append(i)
    alone = groups.pop(None, [])
    texts: list[str] = [""] * len(questions)
    done = 0
    progress(phase, 0, len(questions))
    for members in groups.values():
        first = questions[members[0]]
        with strategy.routed(first):
            answers = generate_batch(strategy.model, strategy.tokenizer, [questions[i] for i in members], contexts=[strategy.prompt_context(questions[i]) for i in members],
                                     processors=[strategy.logits_processors(questions[i]) for i in members], max_new_tokens=max_new_tokens,
                                     beams=strategy.beams(first), progress=lambda n, at=done: progress(phase, at + n, len(questions)))  # fmt: skip
        for i, answer in zip(members, answers):
            texts[i] = answer.text
        done += len(members)
    for i in alone:
        texts[i] = strategy.answer(questions[i], max_new_tokens=max_new_tokens).text
        done += 1
        progress(phase, done, len(questions))
    return texts
