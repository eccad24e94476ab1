"""Batched greedy answers (left-padded, bench and compare) are the answers generated one at a time."""

from __future__ import annotations

import pytest

from clslm.bench import strategy_answers
from clslm.documents import Document
from clslm.generation import SharedPrefix, _through_first, chat_prompt, generate, generate_batch, user_message

from conftest import DOCUMENT as LIGHTHOUSE
from conftest import fast_options
from helpers import load

QUESTIONS = [
    "Who built it?",
    "How tall is the tower of the Kessenbrock Light, and when was it first lit?",
    "When?",
    "What colour is the lamp room of the lighthouse on the northern cape?",
    "Why was the keeper's cottage moved twice during the nineteenth century?",
]
DOCUMENT = "The Kessenbrock Light was built in 1871 by Hanna Voss. Its tower is 38 metres tall; the lamp room is red."


def one_at_a_time(model, tokenizer, questions, **kw):
    return [generate(model, tokenizer, q, **kw).text for q in questions]


@pytest.mark.parametrize("batch_size", [2, 16])
def test_batched_greedy_answers_are_the_answers_one_at_a_time(model_dir, batch_size):
    """Every architecture; prompts of different lengths in one batch (left padding), and batches cut mid-list."""
    model, tokenizer, _ = load(model_dir)
    batched = generate_batch(model, tokenizer, QUESTIONS, max_new_tokens=12, batch_size=batch_size)
    assert [a.text for a in batched] == one_at_a_time(model, tokenizer, QUESTIONS, max_new_tokens=12)
    alone = generate(model, tokenizer, QUESTIONS[1], max_new_tokens=12)
    assert (batched[1].prompt, batched[1].prompt_tokens, batched[1].context_tokens) == (alone.prompt, alone.prompt_tokens, 0)


@pytest.mark.parametrize("beams", [2, 3])
def test_batched_beam_search_answers_are_the_answers_one_at_a_time(model_dir, beams):
    """Beam search per row (each row keeps its own hypotheses) gives each question's answer alone."""
    model, tokenizer, _ = load(model_dir)
    batched = generate_batch(model, tokenizer, QUESTIONS, max_new_tokens=12, batch_size=3, beams=beams)
    assert [a.text for a in batched] == one_at_a_time(model, tokenizer, QUESTIONS, max_new_tokens=12, beams=beams)


def test_each_rows_own_logits_processor_acts_on_its_row_only(llama_dir):
    """jitrl-mvp's token bias per question, batched: each answer is the one generate() gives with its own bias."""
    import torch

    from clslm.strategies.jitrl_mvp import TokenBias

    model, tokenizer, _ = load(llama_dir)
    biases = [[TokenBias(torch.tensor([7, 11, 13]), 8.0)], [], [TokenBias(torch.tensor([21, 22]), 8.0)], [], []]
    batched = generate_batch(model, tokenizer, QUESTIONS, max_new_tokens=8, batch_size=5, processors=biases)
    alone = [generate(model, tokenizer, q, max_new_tokens=8, logits_processors=b).text for q, b in zip(QUESTIONS, biases)]
    assert [a.text for a in batched] == alone
    assert alone[0] != generate(model, tokenizer, QUESTIONS[0], max_new_tokens=8).text  # the bias changes that answer


def test_a_row_that_stops_early_answers_as_alone(llama_dir):
    """A stop token ends one row while the others go on: its answer is cut where generate() stops."""
    model, tokenizer, _ = load(llama_dir)
    first = generate(model, tokenizer, QUESTIONS[0], max_new_tokens=12)
    prompt = tokenizer(first.prompt, return_tensors="pt", add_special_tokens=False)
    stop = int(model.generate(**prompt, max_new_tokens=3, do_sample=False)[0, -1])  # its third token ends it
    model.generation_config.eos_token_id = stop
    expected = one_at_a_time(model, tokenizer, QUESTIONS, max_new_tokens=12)
    assert len(expected[0]) < len(first.text)
    assert [a.text for a in generate_batch(model, tokenizer, QUESTIONS, max_new_tokens=12)] == expected


@pytest.mark.parametrize("shared", [False, True])
def test_batched_answers_reading_a_document_are_the_answers_one_at_a_time(model_dir, shared):
    """With the document above each question; with its KV cache shared, the padding sits after the document."""
    model, tokenizer, _ = load(model_dir)
    context = f"Read this.\n\n{DOCUMENT}"
    prefix = SharedPrefix(model, tokenizer, [chat_prompt(tokenizer, user_message(q, context)) for q in QUESTIONS]) if shared else None
    batched = generate_batch(model, tokenizer, QUESTIONS, contexts=[context] * len(QUESTIONS), max_new_tokens=10, shared=prefix, batch_size=4)
    assert [a.text for a in batched] == one_at_a_time(model, tokenizer, QUESTIONS, context=context, max_new_tokens=10)
    assert all(a.context_tokens > 10 for a in batched)


def test_through_first_keeps_the_stop_token():
    assert _through_first([5, 6, 2, 9, 2], {2}) == [5, 6, 2]
    assert _through_first([5, 6], {2}) == [5, 6]


# Strategies that claim answers_plainly for questions routed to no document (the others never claim it).
ROUTED = ["ttt", "ttt-linear", "doc2lora", "jitrl-mvp"]
MIXED = [
    "Who built the Kessenbrock Light?",
    "What is the capital of France?",
    "How many steps lead to the gallery of the Kessenbrock Light?",
    "Which planet is the largest?",
    "Who wrote Hamlet?",
]


@pytest.mark.parametrize("strategy", ROUTED)
def test_a_strategy_answers_in_batches_what_it_answers_one_at_a_time(tmp_path, llama_dir, strategy):
    """The bench batches the questions a learned strategy answers alike (routed to the same documents, with
    the beams answer() would use, or to nothing), under that routing: every answer is session.ask's."""
    from clslm.session import Session

    with Session.create(tmp_path / "s", model=str(llama_dir), strategy=strategy, options=fast_options(strategy), device="cpu") as session:
        session.learn([Document("kessenbrock.txt", LIGHTHOUSE)])
        learned = session.strategy()
        plain = [learned.answers_plainly(q) for q in MIXED]
        assert plain == [False, True, False, True, True]  # the lighthouse's questions are routed to its document
        assert strategy_answers(learned, MIXED, 10) == [session.ask(q, max_new_tokens=10).text for q in MIXED]
