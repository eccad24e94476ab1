"""ttt-linear's selective keys, its delta-rule inner loop and its merged export (keys=mlp, top_k=0; keys=tfidf)."""

from __future__ import annotations

import pytest
import torch

from clslm.documents import Document
from clslm.generation import generate
from clslm.session import Session
from clslm.strategies.config import parse_options
from clslm.strategies.delta_rule import delta_step, keys_and_values, reconstruction_loss, safe_lr
from clslm.strategies.gating import calibrate_idf, neuron_activations, select_neurons
from clslm.strategies.sparse_keys import MlpKeys, SdmKeys, top_k_sparse
from clslm.strategies.textbook import batches, build_examples
from clslm.strategies.tfidf_keys import key_neurons, neuron_count
from clslm.strategies.ttt_linear import TTTLinear

from conftest import DOCUMENT, fast_options
from helpers import load

QUESTION = "Which engineer built the Kessenbrock Light?"


def make(model_dir, **options) -> TTTLinear:
    model, tokenizer, _ = load(model_dir, "float32")
    return TTTLinear(model, tokenizer, parse_options(TTTLinear.Config, fast_options("ttt-linear") | options))


def one_batch(strategy: TTTLinear) -> dict:
    examples = build_examples(Document(name="k", text=DOCUMENT), strategy.tokenizer, max_tokens=32, questions_per_sentence=1)
    return batches(examples, 4, strategy.tokenizer.pad_token_id)[0]


def nonzeros(keys: torch.Tensor) -> torch.Tensor:
    return (keys != 0).sum(-1)


def test_top_k_keeps_exactly_k_features_per_token_the_largest():
    features = torch.randn(5, 7, 64, generator=torch.Generator().manual_seed(0))
    kept = top_k_sparse(features, 6)
    assert (nonzeros(kept) == 6).all()
    assert torch.equal(kept[kept != 0], features[kept != 0])  # kept as they were
    smallest_kept = kept.abs().masked_fill(kept == 0, float("inf")).amin(-1)
    largest_dropped = features.abs().masked_fill(kept != 0, 0).amax(-1)
    assert (smallest_kept > largest_dropped).all()
    assert torch.equal(top_k_sparse(features, 0), features)  # 0: all


def test_mlp_and_sdm_keys_are_unit_vectors_with_exactly_top_k_features():
    x, h = torch.randn(3, 9, 32), torch.randn(3, 9, 64)
    mlp = MlpKeys(64, 5, normalise=True)(x, h)
    sdm = SdmKeys(32, 512, 4, 7, seed=0)(x)
    assert (nonzeros(mlp) == 5).all() and (nonzeros(sdm) == 7).all() and (sdm >= 0).all()
    for keys in (mlp, sdm):
        assert torch.allclose(keys.norm(dim=-1), torch.ones(3, 9))
    projection = SdmKeys(32, 512, 4, 7, seed=0).projection
    assert ((projection != 0).sum(-1) <= 4).all() and sdm.shape[-1] == 512


@pytest.mark.parametrize("keys", ["mlp", "sdm", "hidden"])
def test_the_fast_layers_read_the_keys_as_configured(llama_dir, keys):
    strategy = make(llama_dir, keys=keys, top_k="6", sdm_dim="256")
    ids = strategy.tokenizer(DOCUMENT, return_tensors="pt")["input_ids"]
    (layer,) = strategy.fast_layers()
    layer.recorded = []
    with torch.no_grad():
        strategy.model(input_ids=ids)
    (seen,) = layer.recorded
    width = strategy.model.config.hidden_size
    assert seen.shape[-1] == {"mlp": strategy.model.config.intermediate_size, "sdm": 256, "hidden": width}[keys]
    assert layer.fast_weight.shape == (width, seen.shape[-1])
    if keys != "hidden":
        assert (nonzeros(seen) == 6).all()


@pytest.mark.parametrize("keys", ["mlp", "tfidf", "sdm", "hidden"])
def test_zero_fast_weights_are_bit_identical_to_the_base_model(model_dir, keys):
    strategy = make(model_dir, keys=keys, sdm_dim="256")
    base, tokenizer, _ = load(model_dir)
    ids = tokenizer(DOCUMENT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(strategy.model(input_ids=ids).logits, base(input_ids=ids).logits)


def test_delta_step_is_one_gradient_step_of_the_reconstruction_loss(llama_dir):
    strategy = make(llama_dir, inner="delta", mask_ratio="0", anchor="0.3", delta_lr="0.2", delta_chunk="100000")
    batch = one_batch(strategy)
    (layer,) = strategy.fast_layers()
    with torch.no_grad():
        layer.fast_weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    w0 = torch.zeros_like(layer.fast_weight)
    ((keys, values),) = keys_and_values(strategy, batch)
    assert keys.shape[0] == values.shape[0] == int((batch["labels"][:, 1:] != -100).sum())
    w = layer.fast_weight.detach().clone().requires_grad_(True)
    reconstruction_loss(w, keys, values, 0.3, w0).backward()
    expected = w.detach() - 0.2 * w.grad
    assert torch.allclose(delta_step(layer.fast_weight.detach(), keys, values, 0.2, 0.3, w0), expected, atol=1e-6)
    # And the inner loop takes that step, at the step size safe_lr allows: one epoch over this one batch.
    lr = safe_lr(keys, 0.2)
    assert 0 < lr <= 0.2
    w = layer.fast_weight.detach().clone().requires_grad_(True)
    reconstruction_loss(w, keys, values, 0.3, w0).backward()
    expected = w.detach() - lr * w.grad
    strategy.anchors = [w0]
    strategy.config.epochs = 1
    strategy._delta_learn([batch], mask_id=0, generator=torch.Generator(), on_step=lambda step: None)
    assert torch.allclose(layer.fast_weight.detach(), expected, atol=1e-6)


def test_the_delta_rule_learns_the_document_with_forward_passes_only(llama_dir):
    strategy = make(llama_dir, inner="delta", delta_lr="1", value_scale="4", epochs="4")
    report = strategy.learn(Document(name="k", text=DOCUMENT))
    assert report.extra["weight_change"] > 0 and report.loss_after < report.loss_before


def test_route_top_answers_with_the_best_documents_change_alone(llama_dir):
    strategy = make(llama_dir, route_top="1")
    strategy.learn(Document(name="k", text=DOCUMENT))
    strategy.learn(Document(name="v", text="The Velmar Bridge crosses the river Oss at Brackley. It opened in 1902 and has seven stone arches."))
    (layer,) = strategy.fast_layers()
    first, second = (change[0] for change in strategy.changes)
    assert first.abs().sum() > 0 and second.abs().sum() > 0
    assert strategy.active_documents(QUESTION) == [0]
    with strategy.routed(QUESTION):
        assert torch.equal(layer.fast_weight, first)
    assert torch.allclose(layer.fast_weight, first + second)  # outside a question: every document's change


TFIDF = {"keys": "tfidf", "neurons_per_token": "0", "neurons": "8"}


def test_neuron_count_grows_with_the_document_within_its_floor_and_cap():
    assert neuron_count(10, 0.7, 0) == 64 and neuron_count(200, 0.7, 0) == 140
    assert neuron_count(200, 0.7, 100) == 100 and neuron_count(200, 0, 8) == 8


@pytest.mark.parametrize("inner", ["adamw", "delta"])
def test_tfidf_keys_a_documents_change_reads_exactly_its_gated_neurons(llama_dir, inner):
    strategy = make(llama_dir, **TFIDF, inner=inner, delta_lr="1", value_scale="4")
    (layer_id,) = strategy.layer_ids
    # The neurons TF-IDF gating picks for the document, computed here from gating.py's parts on the base model.
    base, tokenizer, _ = load(llama_dir, "float32")
    idf = calibrate_idf(base, tokenizer, [layer_id], 0.02)[layer_id]
    expected = select_neurons(neuron_activations(base, tokenizer, [DOCUMENT], [layer_id], chat=False)[layer_id], idf, 8, 0.02)
    assert torch.equal(key_neurons(strategy, DOCUMENT)[0], expected) and expected.numel() == 8
    report = strategy.learn(Document(name="k", text=DOCUMENT))
    assert report.extra["neurons"] == 8 and report.extra["weight_change"] > 0
    ((change,),) = strategy.changes
    written = (change != 0).any(0).nonzero().flatten()
    assert torch.equal(written, expected)  # every picked neuron's column learned, no other column moved
    # So the change reads those neurons' activations and nothing else: W·h = W[:, picked] · h[picked].
    h = torch.randn(5, change.shape[1])
    assert torch.allclose(h @ change.T, h[:, expected] @ change[:, expected].T)
    # A second document (its W learned from zero, route_top 1) writes its own neurons' columns alone.
    other = "The Velmar Bridge crosses the river Oss at Brackley. It opened in 1902 and has seven stone arches."
    picked = key_neurons(strategy, other)[0]
    strategy.learn(Document(name="v", text=other))
    assert torch.equal((strategy.changes[1][0] != 0).any(0).nonzero().flatten(), picked)
    strategy.forget([{}, {}], 1)
    # Saved as its columns alone, and loaded back to the same W.
    state = strategy.state_dict()
    assert state["fast_weight_change.0.0"].shape == (change.shape[0], 8) and state["fast_weight_columns.0.0"].tolist() == expected.tolist()
    (layer,) = strategy.fast_layers()
    before = layer.fast_weight.detach().clone()
    with torch.no_grad():
        layer.fast_weight.zero_()
    strategy.load_state_dict(state)
    assert torch.equal(layer.fast_weight, before)


@pytest.mark.parametrize("options", [{"top_k": "0"}, TFIDF], ids=["mlp", "tfidf"])
def test_merged_export_of_whole_mlp_keys_answers_as_clslm_ask(tmp_path, llama_dir, options):
    from transformers import AutoModelForCausalLM

    options = fast_options("ttt-linear") | options
    with Session.create(tmp_path / "session", model=str(llama_dir), strategy="ttt-linear", options=options, device="cpu") as s:
        s.learn([Document("kessenbrock", DOCUMENT)])
    session = Session.open(tmp_path / "session", device="cpu")
    asked = session.ask(QUESTION).text
    assert session.strategy().cannot_export("merged") is None and session.strategy().cannot_export("peft")
    report = session.export(tmp_path / "out", format="merged")
    assert report.exact and report.max_abs_logit_diff < 1e-4
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    strategy = session.strategy()
    with strategy.disabled():
        assert not torch.equal(exported.model.layers[-1].mlp.down_proj.weight, strategy.model.model.layers[-1].mlp.mlp.down_proj.weight)
    # The exported model, answering the way clslm ask does (the same beams), without clslm's strategy.
    assert generate(exported, strategy.tokenizer, QUESTION, beams=strategy.beams(QUESTION)).text == asked


def test_vocab_restricts_the_training_softmax_but_not_the_reported_loss(llama_dir):
    full = make(llama_dir, epochs="1").learn(Document(name="k", text=DOCUMENT))
    strategy = make(llama_dir, epochs="1", vocab="16")
    data = strategy._batches(Document(name="k", text=DOCUMENT))
    assert all("vocab" in b and b["vocab"].numel() < strategy.model.get_output_embeddings().weight.shape[0] for b in data)
    report = strategy.learn(Document(name="k", text=DOCUMENT))
    assert report.loss_before == full.loss_before and report.loss_after < report.loss_before
