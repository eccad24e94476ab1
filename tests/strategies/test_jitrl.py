"""jitrl-mvp and jitrl-full on tiny random models: retrieval, budget, bias, store modulation, state."""

from __future__ import annotations

import pytest
import torch

from clslm.documents import Document
from clslm.errors import InputError, SessionCorrupt
from clslm.generation import count_tokens, generate, user_message
from clslm.session import Session
from clslm.strategies.config import parse_options
from clslm.strategies.jitrl_full import JitrlFull, StoreReward
from clslm.strategies.jitrl_mvp import MAX_BIAS, JitrlMVP, TokenBias, stop_ids

from conftest import DOCUMENT
from helpers import load

FACT = "The vault of Vellmar Abbey opens only with the brass code 4417."
FILLER = [
    f"Town {name} keeps {animal} on its green hills and sells {crop} at the market every {day}."
    for name, animal, crop, day in zip(
        ["Ashby", "Brill", "Corve", "Dunholm", "Elstow", "Farleigh", "Garth", "Hexley", "Ilkton", "Jarrow"],
        ["sheep", "goats", "geese", "cattle", "ponies", "hens", "ducks", "pigs", "llamas", "rabbits"],
        ["barley", "turnips", "apples", "cheese", "honey", "wool", "plums", "oats", "leeks", "pears"],
        ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "morning", "evening", "noon"],
    )
]
PLANTED = " ".join(FILLER[:5] + [FACT] + FILLER[5:])
QUESTION = "Which code opens the vault of Vellmar Abbey?"
MVP_OPTIONS = {"chunk_tokens": "64", "overlap": "16", "k": "1"}  # the test tokenizer: ~50 tokens a sentence


def make(cls, model_dir, **options):
    model, tokenizer, _ = load(model_dir)
    return cls(model, tokenizer, parse_options(cls.Config, {k: str(v) for k, v in options.items()}))


def mvp(model_dir, **options) -> JitrlMVP:
    strategy = make(JitrlMVP, model_dir, **(MVP_OPTIONS | options))
    strategy.learn(Document(name="planted", text=PLANTED))
    return strategy


def last_logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits[:, -1]


# ---- jitrl-mvp -----------------------------------------------------------------------------------


def test_retrieval_returns_the_chunk_with_the_planted_fact(model_dir):
    strategy = mvp(model_dir)
    assert len(strategy.chunks) > 3  # the fact is one chunk among many
    hits = strategy.retrieve(QUESTION)
    assert len(hits) == 1 and "4417" in strategy.chunks[hits[0]]["text"]
    assert "4417" in strategy.prompt_context(QUESTION)
    # Chunks are whole sentences within the token bound.
    assert all(count_tokens(strategy.tokenizer, c["text"]) <= 64 and c["text"].endswith(".") for c in strategy.chunks)
    assert FACT in {c["text"] for c in strategy.chunks}


def test_adjacent_chunks_do_not_repeat_their_overlap(llama_dir):
    strategy = make(JitrlMVP, llama_dir, chunk_tokens=100, overlap=50, k=2)
    strategy.learn(Document(name="kessenbrock", text=DOCUMENT))
    first, second = (c["text"] for c in strategy.chunks)
    assert "Adelmar" in first and "Adelmar" in second  # the overlap sentence is in both chunks
    context = strategy.prompt_context("Which engineer built the Kessenbrock Light with its granite tower?")
    assert context.count("Adelmar") == 1
    assert context == " ".join(DOCUMENT.split())


def test_a_question_that_matches_nothing_gets_no_context_and_no_bias(llama_dir):
    strategy = mvp(llama_dir)
    assert strategy.prompt_context("Why is the sky blue?") == ""
    assert strategy.logits_processors("Why is the sky blue?") == []


def test_the_router_keeps_weak_matches_out_of_the_prompt(llama_dir):
    # "sheep" occurs in one filler sentence: a TF-IDF search alone would prepend that chunk.
    loose, strict = mvp(llama_dir, route_threshold=0), mvp(llama_dir, route_threshold=0.5)
    assert "sheep" in loose.prompt_context("What do sheep eat?")
    assert strict.prompt_context("What do sheep eat?") == "" and strict.logits_processors("What do sheep eat?") == []
    assert "4417" in strict.prompt_context(QUESTION)  # a question about what was learned still gets its chunk


def test_the_question_is_never_cut(llama_dir):
    strategy = mvp(llama_dir, k=5, budget=40)
    long_question = QUESTION + " Please think about it very carefully before you answer." * 20
    with pytest.raises(InputError, match="never cut") as e:
        strategy.prompt_context(long_question)
    assert e.value.exit_code == 3
    with pytest.raises(InputError, match="budget"):
        strategy.answer(long_question, max_new_tokens=2)
    # A budget just above the question leaves no room for a chunk: no context, the whole question.
    n = count_tokens(strategy.tokenizer, QUESTION)
    strategy.config.budget = n + 2
    assert strategy.prompt_context(QUESTION) == ""
    assert f"\n{QUESTION}<|im_end|>" in strategy.answer(QUESTION, max_new_tokens=2).prompt


def test_chunks_fill_the_budget_beside_the_question(llama_dir):
    strategy, question = mvp(llama_dir, k=3), "Which town sells cheese at the market?"
    full = strategy.prompt_context(question)
    assert "cheese" in full and full.count("Town") == 3
    budget = count_tokens(strategy.tokenizer, user_message(question, full)) - 5
    strategy.config.budget = budget
    context = strategy.prompt_context(question)
    assert context.count("Town") == 2 and "cheese" in context  # the best chunk stays
    assert count_tokens(strategy.tokenizer, user_message(question, context)) <= budget
    assert user_message(question, context).endswith(question)


def test_logit_bias_is_bounded_and_on_the_chunk_tokens(llama_dir):
    strategy = mvp(llama_dir, bias=2.5)
    [processor] = strategy.logits_processors(QUESTION)
    scores = torch.zeros(1, len(strategy.tokenizer))
    delta = processor(torch.zeros(1, 1, dtype=torch.long), scores) - scores
    assert set(delta.unique().tolist()) == {0.0, 2.5}
    chunk_ids = set(strategy.tokenizer(strategy.prompt_context(QUESTION), add_special_tokens=False)["input_ids"])
    biased = set(delta[0].nonzero().flatten().tolist())
    assert chunk_ids <= biased and biased - chunk_ids <= stop_ids(strategy.model, strategy.tokenizer)
    # The bound holds for the option and for the processor itself.
    with pytest.raises(InputError, match="bias"):
        parse_options(JitrlMVP.Config, {"bias": str(MAX_BIAS + 1)})
    huge = TokenBias(torch.tensor([3]), 1e6)(None, torch.zeros(1, 8))
    assert huge.max().item() == MAX_BIAS
    assert strategy.logits_processors(QUESTION) and not mvp(llama_dir, bias=0).logits_processors(QUESTION)


def test_deltas_off_is_the_base_model_with_no_context_and_no_bias(llama_dir):
    strategy = mvp(llama_dir, bias=MAX_BIAS)
    calls = []
    original = strategy.logits_processors
    strategy.logits_processors = lambda q: calls.append(q) or original(q)
    on = strategy.answer(QUESTION, max_new_tokens=6)
    assert calls == [QUESTION] and on.context_tokens > 0
    with strategy.disabled():
        off = strategy.answer(QUESTION, max_new_tokens=6)
    assert calls == [QUESTION]  # no processor was asked for with deltas off
    base_model, tokenizer, _ = load(llama_dir)
    base = generate(base_model, tokenizer, QUESTION, max_new_tokens=6)
    assert (off.text, off.prompt, off.context_tokens) == (base.text, base.prompt, 0)


def test_context_tokens_are_reported_honestly(llama_dir):
    strategy = mvp(llama_dir, k=2)
    answer = strategy.answer(QUESTION, max_new_tokens=3)
    context = strategy.prompt_context(QUESTION)
    assert "4417" in answer.prompt and context in answer.prompt
    assert answer.context_tokens == count_tokens(strategy.tokenizer, context) > 0
    assert answer.prompt_tokens == len(strategy.tokenizer(answer.prompt, add_special_tokens=False)["input_ids"])


def test_mvp_state_round_trips_through_a_session(llama_dir, tmp_path):
    path = tmp_path / "s"
    with Session.create(path, model=str(llama_dir), strategy="jitrl-mvp", options=MVP_OPTIONS | {"bias": "3"}, device="cpu") as s:
        s.learn([Document(name="planted", text=PLANTED)])
        saved = s.ask(QUESTION, max_new_tokens=6)
        chunks = s.strategy().chunks
        scores = torch.randn(1, len(s.strategy().tokenizer))
        biased = s.strategy().logits_processors(QUESTION)[0](None, scores)
    assert any(p.name.startswith("state-") for p in path.iterdir())
    with Session.open(path, device="cpu") as s:
        strategy = s.strategy()
        assert strategy.chunks == chunks and strategy.router.names == ["planted"]
        again = s.ask(QUESTION, max_new_tokens=6)
        assert (again.text, again.prompt, again.context_tokens) == (saved.text, saved.prompt, saved.context_tokens)
        assert torch.equal(strategy.logits_processors(QUESTION)[0](None, scores), biased)
        keys = strategy.router.keys[0]
        strategy.load_extra_state({"chunks": chunks})  # saved before routing existed: keys are rebuilt
        assert strategy.router.names == ["planted"] and strategy.router.keys[0].sentences == keys.sentences


# ---- jitrl-full ----------------------------------------------------------------------------------


def full(model_dir, **options) -> JitrlFull:
    strategy = make(JitrlFull, model_dir, **options)
    strategy.learn(Document(name="kessenbrock", text=DOCUMENT))
    return strategy


def doc_ids(strategy) -> torch.Tensor:
    return strategy.tokenizer(DOCUMENT, return_tensors="pt")["input_ids"]  # as learn() reads it


def reward_after(strategy, ids) -> torch.Tensor:
    """The processor's change to zero logits right after the model read `ids`."""
    last_logits(strategy.model, ids)
    scores = torch.zeros(1, len(strategy.tokenizer))
    return StoreReward(strategy)(ids, scores) - scores


def test_store_holds_every_position_with_its_next_token(model_dir):
    strategy = full(model_dir)
    ids = doc_ids(strategy)[0]
    assert torch.equal(strategy.next_ids, ids[1:])
    assert strategy.keys.dtype == torch.float16 and strategy.keys.shape == (len(ids) - 1, 32)
    assert torch.allclose(strategy.keys.float().norm(dim=-1), torch.ones(len(ids) - 1), atol=1e-2)


def test_a_stored_state_rewards_the_token_that_followed_it(model_dir):
    strategy = full(model_dir, k=1, threshold=0.99, strength=3)
    ids, t = doc_ids(strategy), 20
    delta = reward_after(strategy, ids[:, : t + 1])
    assert delta[0].nonzero().flatten().tolist() == [int(ids[0, t + 1])]
    assert delta.max().item() == pytest.approx(3.0, rel=1e-2)


def test_modulation_is_exactly_zero_below_the_threshold(model_dir):
    strategy = full(model_dir, k=4, strength=3)
    ids = doc_ids(strategy)[:, :12]
    last_logits(strategy.model, ids)
    best = (strategy.key(strategy.last_hidden()) @ strategy.keys.float().T).max().item()
    strategy.config.threshold = best + 1e-3
    scores = torch.randn(1, len(strategy.tokenizer))
    assert StoreReward(strategy)(ids, scores) is scores  # untouched, not merely close
    strategy.config.threshold = best - 1e-3
    assert reward_after(strategy, ids).abs().sum() > 0


def test_modulation_is_bounded_by_the_strength(llama_dir):
    strategy = full(llama_dir, k=8, threshold=-1, strength=2)
    delta = reward_after(strategy, doc_ids(strategy)[:, :30])
    assert delta.min() >= 0 and 0 < delta.sum() <= 2 + 1e-4
    assert set(delta[0].nonzero().flatten().tolist()) <= set(strategy.next_ids.tolist())


def test_empty_store_changes_nothing(model_dir):
    strategy = make(JitrlFull, model_dir, threshold=-1, strength=5)
    assert strategy.logits_processors(QUESTION) == [] and strategy.state_dict() == {}
    ids = doc_ids(strategy)[:, :10]
    last_logits(strategy.model, ids)
    scores = torch.randn(1, len(strategy.tokenizer))
    assert StoreReward(strategy)(ids, scores) is scores
    base_model, tokenizer, _ = load(model_dir)
    assert strategy.answer(QUESTION, max_new_tokens=5).text == generate(base_model, tokenizer, QUESTION, max_new_tokens=5).text


def test_the_store_steers_generation_and_deltas_off_is_the_base(llama_dir):
    strategy = full(llama_dir, k=1, threshold=-1, strength=50)  # far above a random model's logit range
    base_model, tokenizer, _ = load(llama_dir)
    base = generate(base_model, tokenizer, QUESTION, max_new_tokens=1)
    prompt = tokenizer(base.prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert torch.equal(last_logits(strategy.model, prompt), last_logits(base_model, prompt))  # no weight changed
    expected = int(strategy.next_ids[(strategy.key(strategy.last_hidden()) @ strategy.keys.float().T).argmax()])
    steered = strategy.answer(QUESTION, max_new_tokens=1)
    assert tokenizer(steered.text, add_special_tokens=False)["input_ids"][:1] == tokenizer(tokenizer.decode([expected]).strip(), add_special_tokens=False)["input_ids"][:1]
    with strategy.disabled():
        assert strategy.answer(QUESTION, max_new_tokens=1).text == base.text


def test_the_store_keeps_the_newest_max_store_rows(llama_dir):
    strategy = full(llama_dir, max_store=10)
    assert torch.equal(strategy.next_ids, doc_ids(strategy)[0, -10:])
    other = "A second, different text about the tides of the Greywater Sound and its ferries."
    report = strategy.learn(Document(name="other", text=other))
    ids = strategy.tokenizer(other, return_tensors="pt")["input_ids"][0]
    assert torch.equal(strategy.next_ids, ids[-10:]) and len(strategy.keys) == 10
    assert report.extra["dropped"] == len(ids) - 1


def test_random_projection_reduces_the_width(llama_dir):
    strategy = full(llama_dir, dim=8, k=1, threshold=0.99, strength=1)
    assert strategy.keys.shape[1] == 8
    ids, t = doc_ids(strategy), 15
    assert reward_after(strategy, ids[:, : t + 1])[0].argmax().item() == int(ids[0, t + 1])
    with pytest.raises(InputError, match="dim"):
        make(JitrlFull, llama_dir, dim=32)  # not smaller than the model's width


def test_full_state_round_trips_through_a_session(model_dir, tmp_path):
    path, options = tmp_path / "s", {"threshold": "0.2", "strength": "20", "k": "4"}
    ids = None
    with Session.create(path, model=str(model_dir), strategy="jitrl-full", options=options, device="cpu") as s:
        s.learn([Document(name="kessenbrock", text=DOCUMENT)])
        strategy = s.strategy()
        state = strategy.state_dict()
        ids = doc_ids(strategy)[:, :25]
        delta = reward_after(strategy, ids)
        saved = s.ask(QUESTION, max_new_tokens=6)
    assert delta.abs().sum() > 0
    with Session.open(path, device="cpu") as s:
        strategy = s.strategy()
        again = strategy.state_dict()
        assert set(again) == set(state) and all(torch.equal(again[k], state[k]) for k in state)
        assert torch.equal(reward_after(strategy, ids), delta)
        assert s.ask(QUESTION, max_new_tokens=6).text == saved.text


def test_a_store_read_at_another_layer_is_refused(llama_dir, tmp_path):
    path = tmp_path / "s"
    with Session.create(path, model=str(llama_dir), strategy="jitrl-full", device="cpu") as s:
        s.learn([Document(name="kessenbrock", text=DOCUMENT)])
    with Session.open_or_create(path, options={"layer": "0"}, device="cpu") as s:
        with pytest.raises(SessionCorrupt, match="layer"):
            s.strategy()
