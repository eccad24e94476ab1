"""The Strategy contract, checked for every available strategy on every tiny architecture.

A new strategy inherits this whole table: learning changes only its own state, base weights stay
bit-identical, deltas-off is exactly the base model, state round-trips through a session, the prompt
holds only the question, and learning is deterministic for a seed; routed strategies keep unrelated
questions on the base model; every option has help and checked bounds. What a strategy declares for these
tests is its own (class attributes `test_options`, `learns_by_gradient`; `learns_in_weights()`), so adding a
strategy is one file and one registry line: tests/tiny_strategy.py runs through the whole table that way.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

import pytest
import torch

from clslm import paths, registry
from clslm.documents import Document
from clslm.errors import InputError, StrategyNotImplemented, UnknownStrategy
from clslm.generation import generate
from clslm.likelihood import answer_nll
from clslm.session import Session
from clslm.strategies.llm_client import LLMClient
from clslm.strategies.base import LearnReport, Strategy, StrategyContext
from clslm.strategies.config import StrategyConfig, config_from_dict, parse_options

from conftest import DOCUMENT, fast_options
from helpers import load
from tiny_strategy import Notes

# A strategy from outside clslm (one file) joins the table with one registry line: see extra_strategies.
EXTRA = [Notes]
STRATEGIES = registry.available() + [cls.name for cls in EXTRA]
QUESTION = "Which engineer built the Kessenbrock Light?"


class CompetentLLM(LLMClient):
    """ace's LLM as a capable model would act (a random tiny model writes noise that no question matches):
    it drafts, finds the builder missing, and the Curator adds it as a bullet."""

    label = "competent"

    def chat(self, messages, *, schema=None):
        if schema is None:
            return "Q: How tall is the tower? A: 41 metres."
        if "missing" in schema["properties"]:
            return json.dumps({"missing": [FACT], "wrong": []})
        return json.dumps({"operations": [{"op": "add", "id": "", "text": FACT}]})


FACT = "The Kessenbrock Light was built by the engineer Adelmar Fosk."


def build_strategy(name: str, model, tokenizer, source, config) -> Strategy:
    strategy = registry.get(name)(model, tokenizer, config, StrategyContext(source.fingerprint, cache_dir=paths.clslm_home()))
    if name == "ace":
        strategy.client = CompetentLLM()
    return strategy


def make_strategy(name: str, model_dir, **overrides) -> Strategy:
    model, tokenizer, source = load(model_dir)
    config = parse_options(registry.get(name).Config, fast_options(name) | overrides)
    return build_strategy(name, model, tokenizer, source, config)


def probe_ids(tokenizer) -> torch.Tensor:
    """A chat prompt plus some document text: long enough to pass Gemma 3's sliding window."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True) + DOCUMENT
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


# What the strategy's answer path makes of a reply: weights, prompt context and logits processors all act here.
REPLY = "Adelmar Fosk, in 1793."


def reply_nll(strategy: Strategy) -> float:
    return strategy.answer_nll(QUESTION, REPLY)


def base_reply_nll(learned: "Learned") -> float:
    return answer_nll(learned.base_model, learned.strategy.tokenizer, QUESTION, REPLY)


@dataclass
class Learned:
    strategy: Strategy
    report: LearnReport
    originals: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name → (the base tensor object, its value before)
    state_before: dict[str, torch.Tensor]
    extra_before: dict
    base_model: torch.nn.Module  # a fresh load of the same model dir
    ids: torch.Tensor


@pytest.fixture(scope="module", autouse=True)
def extra_strategies():
    """The registry line that adds a strategy: registry.register(cls) (for this module's tests)."""
    for cls in EXTRA:
        registry.register(cls)
    yield
    for cls in EXTRA:
        registry.unregister(cls.name)


@pytest.fixture(params=STRATEGIES)
def strategy_name(request) -> str:
    return request.param


@pytest.fixture
def learned(strategy_name, model_dir) -> Learned:
    model, tokenizer, source = load(model_dir)
    # Keep the base parameter/buffer objects themselves: wrappers may move them in the module tree
    # (ttt's DualMLP holds the original mlp), but they must stay the same tensors with the same values.
    originals = {n: (t, t.detach().clone()) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    config = parse_options(registry.get(strategy_name).Config, fast_options(strategy_name))
    strategy = build_strategy(strategy_name, model, tokenizer, source, config)
    state_before = {k: v.clone() for k, v in strategy.state_dict().items()}
    extra_before = strategy.extra_state()
    report = strategy.learn(Document(name="kessenbrock", text=DOCUMENT))
    base_model, _, _ = load(model_dir)
    return Learned(strategy, report, originals, state_before, extra_before, base_model, probe_ids(tokenizer))


def test_every_reserved_name_is_known():
    assert {"ttt", "ttt-linear", "jitrl-mvp", "jitrl-full", "ace", "doc2lora"} <= set(registry.names())
    assert "ttt" in STRATEGIES


def test_attach_alone_keeps_the_base_model(strategy_name, model_dir):
    strategy = make_strategy(strategy_name, model_dir)
    base, tokenizer, _ = load(model_dir)
    ids = probe_ids(tokenizer)
    assert torch.equal(logits(strategy.model, ids), logits(base, ids))


def test_learning_changes_the_state(learned):
    strategy = learned.strategy
    after = strategy.state_dict()
    assert after or strategy.extra_state(), "a strategy that learned something has state to save"
    changed = set(after) != set(learned.state_before) or any(not torch.equal(after[k], learned.state_before[k]) for k in after)
    assert changed or strategy.extra_state() != learned.extra_before
    # ...and the learned state acts on the answer: through weights, prompt context or logits.
    assert reply_nll(strategy) != base_reply_nll(learned)
    if strategy_acts_on_weights(strategy):
        assert not torch.equal(logits(strategy.model, learned.ids), logits(learned.base_model, learned.ids))


def strategy_acts_on_weights(strategy: Strategy) -> bool:
    """Strategies that keep what they learned in weights only: nothing may be added to the prompt."""
    return strategy.learns_in_weights()


def test_learning_leaves_every_base_weight_bit_identical(learned):
    model = learned.strategy.model
    live = {id(t) for t in [*model.parameters(), *model.buffers()]}
    fresh = dict([*learned.base_model.named_parameters(), *learned.base_model.named_buffers()])
    for name, (tensor, before) in learned.originals.items():
        assert id(tensor) in live, f"{name} was replaced instead of wrapped"
        assert not tensor.requires_grad, f"{name} was left trainable"
        assert torch.equal(tensor, before), f"{name} changed while learning"
        assert torch.equal(tensor, fresh[name]), f"{name} differs from a fresh load"
    # Nothing the strategy saves is a base weight: state is what was learned, not a copy of the model.
    prefix = type(learned.strategy).prefix
    if prefix:
        assert all(prefix in key for key in learned.strategy.state_dict())


def test_report_describes_the_document(learned, strategy_name):
    report = learned.report
    assert report.name == "kessenbrock"
    assert report.sha256 == Document(name="x", text=DOCUMENT).sha256
    assert report.tokens == len(learned.strategy.tokenizer(DOCUMENT, add_special_tokens=False)["input_ids"])
    assert report.seconds >= 0
    if registry.get(strategy_name).learns_by_gradient:
        assert report.loss_before is not None and report.loss_after is not None
        assert report.loss_after < report.loss_before


def test_disabled_is_exactly_the_base_model(learned):
    strategy, ids = learned.strategy, learned.ids
    base_logits = logits(learned.base_model, ids)
    with strategy.disabled():
        assert not strategy.enabled
        assert torch.equal(logits(strategy.model, ids), base_logits)
        assert reply_nll(strategy) == base_reply_nll(learned)
        off = strategy.answer(QUESTION, max_new_tokens=6)
    # Switched back on afterwards.
    assert strategy.enabled
    assert reply_nll(strategy) != base_reply_nll(learned)
    base = generate(learned.base_model, strategy.tokenizer, QUESTION, max_new_tokens=6)
    assert off.deltas is False
    assert (off.text, off.prompt, off.prompt_tokens, off.context_tokens) == (base.text, base.prompt, base.prompt_tokens, 0)


def routes(strategy_name: str) -> bool:
    """Strategies whose learned units act only on the questions the router matches (router.py)."""
    cls = next((c for c in EXTRA if c.name == strategy_name), None) or registry.get(strategy_name)
    return "route_threshold" in {f.name for f in dataclasses.fields(cls.Config)}


UNRELATED = "What is the capital of France?"


def test_routing_keeps_unrelated_questions_on_the_base_model(learned, strategy_name, model_dir):
    if not routes(strategy_name):
        pytest.skip("no router")
    strategy, ids = learned.strategy, learned.ids
    # An unrelated question: the answer path is exactly the base model's (weights, prompt and logits).
    assert strategy.answer_nll(UNRELATED, REPLY) == answer_nll(learned.base_model, strategy.tokenizer, UNRELATED, REPLY)
    with strategy.routed(UNRELATED):
        assert torch.equal(logits(strategy.model, ids), logits(learned.base_model, ids))
    assert strategy.prompt_context(UNRELATED) == "" and strategy.logits_processors(UNRELATED) == []
    # A question about the document wakes what was learned; the keys survive a save and load.
    assert reply_nll(strategy) != base_reply_nll(learned)
    if strategy_acts_on_weights(strategy):
        with strategy.routed(QUESTION):
            assert not torch.equal(logits(strategy.model, ids), logits(learned.base_model, ids))
    again = make_strategy(strategy_name, model_dir)
    again.load_extra_state(json.loads(json.dumps(strategy.extra_state())))
    assert again.router.to_json() == strategy.router.to_json() and len(again.router) >= 1
    assert again.router.scores(QUESTION) == strategy.router.scores(QUESTION)


@pytest.mark.parametrize("name", [n for n in STRATEGIES if routes(n)])
def test_routing_options_are_checked(name):
    config = registry.get(name).Config
    for bad in ("5", "-0.1"):
        with pytest.raises(InputError, match=r"route_threshold must be in \[0, 1\]"):
            parse_options(config, {"route_threshold": bad})
    if "route_top" in {f.name for f in dataclasses.fields(config)}:
        with pytest.raises(InputError, match="route_top must be >= "):
            parse_options(config, {"route_top": "-3"})
    assert parse_options(config, {"route_threshold": "0"}).route_threshold == 0


def test_disabled_restores_state_after_an_error(learned):
    strategy = learned.strategy
    with pytest.raises(RuntimeError):
        with strategy.disabled():
            raise RuntimeError("boom")
    assert strategy.enabled
    assert reply_nll(strategy) != base_reply_nll(learned)


def test_ask_prompt_holds_only_the_question(learned, strategy_name):
    strategy = learned.strategy
    answer = strategy.answer(QUESTION, max_new_tokens=4)
    context = strategy.prompt_context(QUESTION)
    if strategy_acts_on_weights(strategy):
        assert context == ""
    if not context:
        # Written out by hand (the test tokenizer's ChatML template), not through clslm's own helpers.
        assert answer.prompt == f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
        assert answer.context_tokens == 0
        assert "Adelmar" not in answer.prompt
    else:
        assert answer.context_tokens == len(strategy.tokenizer(context.strip(), add_special_tokens=False)["input_ids"]) > 0
    assert answer.prompt_tokens == len(strategy.tokenizer(answer.prompt, add_special_tokens=False)["input_ids"])
    assert answer.deltas is True


def test_save_then_open_gives_identical_logits(strategy_name, model_dir, tmp_path):
    path = tmp_path / "session"
    with Session.create(path, model=str(model_dir), strategy=strategy_name, options=fast_options(strategy_name), device="cpu") as s:
        s.learn([Document(name="kessenbrock", text=DOCUMENT)])
        strategy = s.strategy()
        ids = probe_ids(strategy.tokenizer)
        saved_logits = logits(strategy.model, ids)
        saved_nll = reply_nll(strategy)
        saved_state = strategy.state_dict()
        saved_answer = s.ask(QUESTION, max_new_tokens=6)
    reopened = Session.open(path, device="cpu")
    with reopened:
        strategy = reopened.strategy()
        assert torch.equal(logits(strategy.model, ids), saved_logits)
        assert reply_nll(strategy) == saved_nll
        state = strategy.state_dict()
        assert set(state) == set(saved_state) and all(torch.equal(state[k], saved_state[k]) for k in state)
        again = reopened.ask(QUESTION, max_new_tokens=6)
        assert (again.text, again.prompt) == (saved_answer.text, saved_answer.prompt)
        # Deltas off after a reload is still the base model.
        base, _, _ = load(model_dir)
        with strategy.disabled():
            assert torch.equal(logits(strategy.model, ids), logits(base, ids))


def test_learning_is_deterministic_for_a_seed(strategy_name, model_dir):
    doc = Document(name="kessenbrock", text=DOCUMENT)
    first, second = make_strategy(strategy_name, model_dir), make_strategy(strategy_name, model_dir)
    r1, r2 = first.learn(doc), second.learn(doc)
    s1, s2 = first.state_dict(), second.state_dict()
    assert set(s1) == set(s2) and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert (r1.loss_before, r1.loss_after) == (r2.loss_before, r2.loss_after)
    assert first.extra_state() == second.extra_state()


# ---- registry and options (the parts of the contract that need no model) ---------------------------


def test_registry_errors_are_input_errors(planned_strategy):
    with pytest.raises(StrategyNotImplemented, match="not implemented yet") as e:
        registry.get(planned_strategy)
    assert e.value.exit_code == 3
    with pytest.raises(UnknownStrategy, match="unknown strategy") as e:
        registry.get("no-such-strategy")
    assert e.value.exit_code == 3


@dataclass
class _ToyConfig(StrategyConfig):
    rate: float = 0.5
    steps: int = 2
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    label: str | None = None


class _Toy(Strategy):
    name = "toy-contract"
    Config = _ToyConfig

    def learn(self, document, on_step=None):  # pragma: no cover - never called
        raise NotImplementedError


def test_register_refuses_taken_names_and_unregisters():
    class Clash(_Toy):
        name = "ttt"

    with pytest.raises(ValueError, match="already exists"):
        registry.register(Clash)
    registry.register(_Toy)
    try:
        assert registry.get("toy-contract") is _Toy
        assert "toy-contract" in registry.available() and "toy-contract" in registry.names()
        with pytest.raises(ValueError, match="already exists"):
            registry.register(_Toy)
    finally:
        registry.unregister("toy-contract")
    assert "toy-contract" not in registry.names()


def test_parse_options_coerces_to_field_types():
    config = parse_options(_ToyConfig, {"rate": "1e-3", "steps": "7", "flag": "yes", "mode": "b", "label": "x", "seed": "3"})
    assert (config.rate, config.steps, config.flag, config.mode, config.label, config.seed) == (1e-3, 7, True, "b", "x", 3)
    assert parse_options(_ToyConfig, {"flag": "off", "label": ""}).flag is False
    assert parse_options(_ToyConfig, {"label": ""}).label is None
    # A base config keeps its values for keys not given.
    assert parse_options(_ToyConfig, {"steps": "9"}, base=config).rate == 1e-3


@pytest.mark.parametrize(
    "options, message",
    [
        ({"nope": "1"}, "unknown option 'nope'"),
        ({"steps": "many"}, "steps"),
        ({"steps": "1.5"}, "steps"),
        ({"rate": "fast"}, "rate"),
        ({"flag": "maybe"}, "flag"),
        ({"mode": "c"}, "choose from a, b"),
    ],
)
def test_parse_options_rejects_bad_keys_and_values(options, message):
    with pytest.raises(InputError, match=message) as e:
        parse_options(_ToyConfig, options)
    # Every -o error names the valid keys, so the user can fix the command line at once.
    assert "flag, label, mode, rate, seed, steps" in str(e.value)
    assert e.value.exit_code == 3


def test_a_preset_stands_for_its_options_and_explicit_options_win():
    from clslm.strategies.ttt import TTTConfig

    seed = parse_options(TTTConfig, {"preset": "seed"})
    assert (seed.lr, seed.epochs, seed.format, seed.max_tokens, seed.route_threshold) == (1e-5, 1, "raw", 33, 0.0)
    assert parse_options(TTTConfig, {"preset": "seed", "epochs": "3"}).epochs == 3
    whole = {"layers": 0.25, "neurons_per_token": 0.0, "chunk_tokens": 0, "beams": 1}  # the recipes before ttt v2: one unit per document, greedy answers
    assert parse_options(TTTConfig, {"preset": "naive"}) == TTTConfig(lr=1e-4, epochs=20, questions=0, neurons=0, route_threshold=0.0, **whole)
    assert parse_options(TTTConfig, {"preset": "v1"}) == TTTConfig(neurons=320, **whole)
    with pytest.raises(InputError, match="unknown preset 'fast'; presets: naive, seed, v1"):
        parse_options(TTTConfig, {"preset": "fast"})
    with pytest.raises(InputError, match="none for this strategy"):
        parse_options(_ToyConfig, {"preset": "seed"})


def test_config_from_dict_drops_unknown_keys_and_fills_defaults():
    config = config_from_dict(_ToyConfig, {"steps": 4, "removed_in_a_later_version": 1})
    assert config == _ToyConfig(steps=4)


def test_every_option_declares_its_help_and_its_bounds_are_checked(strategy_name):
    """Options are declared with option(default, help, min=/max=/above=): StrategyConfig checks the bounds,
    `clslm strategies` shows them with the help."""
    cls = registry.get(strategy_name).Config
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{strategy_name}: option {f.name} has no help"
        low, high, above = (f.metadata.get(k) for k in ("min", "max", "above"))
        outside = [v for v in (low - 1 if low is not None else None, above, high + 1 if high is not None else None) if v is not None]
        for value in outside:
            with pytest.raises(InputError, match=rf"{f.name} must be (>|in)") as e:
                parse_options(cls, {f.name: str(int(value) if f.type in ("int", int) else float(value))})
            assert e.value.exit_code == 3
        for value in (low, high):  # the bounds themselves are allowed (unless another check needs more)
            if value is not None and above is None:
                try:
                    parse_options(cls, {f.name: str(value)})
                except InputError as e:
                    assert f"{f.name} must be" not in str(e), e


def test_strategy_config_validation_is_an_input_error(strategy_name):
    cls = registry.get(strategy_name).Config
    import dataclasses

    numeric = [f.name for f in dataclasses.fields(cls) if f.type in ("int", "float", int, float) and f.name != "seed"]
    rejected = 0
    for key in numeric:
        try:
            parse_options(cls, {key: "-1"})
        except InputError:
            rejected += 1
    assert rejected > 0, "a strategy config should validate its numbers (e.g. lr > 0)"
