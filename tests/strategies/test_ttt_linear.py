"""ttt-linear: the masked objective, the anchor term, the exact-identity start, fp32 fast weights, routing."""

from __future__ import annotations

import pytest
import torch

from clslm.documents import Document
from clslm.strategies.config import parse_options
from clslm.strategies.textbook import batches, build_examples
from clslm.strategies.ttt_linear import TTTLinear, mask_replies

from conftest import DOCUMENT, fast_options
from helpers import load


def make(model_dir, dtype="float32", **options) -> TTTLinear:
    model, tokenizer, _ = load(model_dir, dtype)
    return TTTLinear(model, tokenizer, parse_options(TTTLinear.Config, fast_options("ttt-linear") | options))


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture
def batch(tokenizer):
    examples = build_examples(Document(name="k", text=DOCUMENT), tokenizer, max_tokens=32, questions_per_sentence=1)
    return batches(examples, 64, tokenizer.pad_token_id)[0]


def test_mask_replaces_only_reply_tokens_and_keeps_the_loss_there(batch):
    masked = mask_replies(batch, 0.5, mask_id=7, generator=torch.Generator().manual_seed(0))
    reply = batch["labels"] != -100
    chosen = masked["input_ids"] != batch["input_ids"]
    assert not (chosen & ~reply).any(), "a prompt token was masked"
    assert (masked["input_ids"][chosen] == 7).all()
    # Loss only where a token was masked, with the original token as the target.
    kept = masked["labels"] != -100
    assert torch.equal(kept, chosen | (reply & (batch["input_ids"] == 7)))
    assert torch.equal(masked["labels"][kept], batch["input_ids"][kept])
    share = chosen.sum() / reply.sum()
    assert 0.4 < share < 0.6
    assert torch.equal(masked["attention_mask"], batch["attention_mask"])
    # All of the replies at ratio 1; a fresh draw differs from the first.
    full = mask_replies(batch, 1.0, mask_id=7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(full["labels"] != -100, reply)
    again = mask_replies(batch, 0.5, mask_id=7, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(again["input_ids"], masked["input_ids"])


def test_anchor_term_is_lambda_times_squared_distance_and_pulls_back(llama_dir):
    strategy = make(llama_dir, anchor="0.5")
    layers = strategy.fast_layers()
    strategy.anchors = [torch.full_like(m.fast_weight, 0.1) for m in layers]
    with torch.no_grad():
        for m in layers:
            m.fast_weight.fill_(0.3)
    expected = 0.5 * sum(m.fast_weight.numel() * 0.2**2 for m in layers)
    assert strategy.anchor_penalty().item() == pytest.approx(expected, rel=1e-6)
    # Its gradient points from W₀ to W: one descent step on it alone moves W toward W₀.
    for m in layers:
        m.fast_weight.requires_grad_(True)
    strategy.anchor_penalty().backward()
    for m, w0 in zip(layers, strategy.anchors):
        assert torch.allclose(m.fast_weight.grad, torch.full_like(w0, 2 * 0.5 * 0.2))
        stepped = m.fast_weight.detach() - 0.1 * m.fast_weight.grad
        assert (stepped - w0).abs().max() < (m.fast_weight.detach() - w0).abs().max()


def test_untrained_fast_weights_are_an_exact_identity_even_when_switched_on(model_dir, tokenizer):
    strategy = make(model_dir)
    base, _, _ = load(model_dir)
    ids = tokenizer(DOCUMENT, return_tensors="pt")["input_ids"]
    assert all(m.enabled and m.route for m in strategy.fast_layers())
    assert torch.equal(logits(strategy.model, ids), logits(base, ids))


def test_fast_weights_are_fp32_whatever_the_model_dtype(llama_dir):
    strategy = make(llama_dir, dtype="bfloat16", state_dtype="float32")
    assert strategy.model.dtype == torch.bfloat16
    assert all(m.fast_weight.dtype == torch.float32 for m in strategy.fast_layers())
    report = strategy.learn(Document(name="k", text=DOCUMENT))
    assert report.loss_after < report.loss_before
    assert all(m.fast_weight.dtype == torch.float32 for m in strategy.fast_layers())
    state = strategy.state_dict()  # the document's change to W at the one fast layer (W is the sum of the changes): its columns
    assert set(state) == {"fast_weight_change.0.0", "fast_weight_columns.0.0"} and state["fast_weight_change.0.0"].dtype == torch.float32


def test_learning_moves_only_the_fast_weights_and_the_anchor_limits_it(llama_dir):
    loose, tight = make(llama_dir, anchor="0"), make(llama_dir, anchor="1000")
    doc = Document(name="k", text=DOCUMENT)
    moved_loose, moved_tight = loose.learn(doc).extra["weight_change"], tight.learn(doc).extra["weight_change"]
    assert moved_loose > 0 and moved_tight > 0
    assert moved_tight < moved_loose


def test_the_shared_fast_weights_act_on_every_matching_question(llama_dir):
    # That general questions see the base model is a contract row (tests/test_contract.py).
    strategy = make(llama_dir)
    strategy.learn(Document(name="k", text=DOCUMENT))
    assert strategy.matches("Which engineer built the Kessenbrock Light?")
    assert not strategy.matches("What is the capital of France?")
    assert strategy.active_documents("Which engineer built the Kessenbrock Light?") == [0]
    always = make(llama_dir, route_threshold="0")
    assert always.matches("What is the capital of France?")


def test_routing_blocks_nest(llama_dir):
    # answer() routes on its own; called inside another routed block it must leave that block's W and routes as they were.
    strategy = make(llama_dir, route_threshold="0.2")
    strategy.learn(Document("kessenbrock", DOCUMENT))
    strategy.learn(Document("velmar", "The Velmar Bridge crosses the river Oss at Brackley. It opened in 1902 and has seven stone arches."))
    ids = torch.tensor([[1, 5, 9, 14]])
    with strategy.routed("When did the Velmar Bridge open?"):
        assert strategy.active_documents("When did the Velmar Bridge open?") == [1]
        before = strategy.model(input_ids=ids).logits
        with strategy.routed("Which engineer built the Kessenbrock Light?"):
            pass
        assert torch.equal(strategy.model(input_ids=ids).logits, before)
