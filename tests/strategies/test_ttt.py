"""ttt particulars: training text, neuron gating, sparse patches, routing its parts."""

from __future__ import annotations

import random

import pytest
import torch

from clslm.documents import Document
from clslm.strategies import gating
from clslm.strategies.base import StrategyContext
from clslm.generation import chat_prompt
from clslm import paths
from clslm.strategies.context_distillation import answer, distillation_loss, teach, teacher_message
from clslm.strategies.textbook import batches, build_examples, content_words, cues, reply_loss, resolve_pronoun, sections, subject, training_vocab, turns
from clslm.strategies.training import PhaseClock, bfloat16_head
from clslm.strategies.ttt import TTT, TTTConfig

from conftest import DOCUMENT
from helpers import load

OTHER = "The Velmar Bridge crosses the river Oss at Brackley. It opened in 1902 and has seven stone arches."


def make(model_dir, **options):
    model, tokenizer, _ = load(model_dir)
    config = TTTConfig(**{"epochs": 2, "neurons": 8, "max_tokens": 32, "precision": "float32", **options})
    return TTT(model, tokenizer, config, StrategyContext("test-model", cache_dir=paths.clslm_home()))


# ---- training text -------------------------------------------------------------------------------


def test_subject_is_the_most_frequent_proper_name():
    assert subject(DOCUMENT) == "the Kessenbrock Light"


def test_headings_are_not_taught_as_facts(tokenizer):
    """A part of a markdown report: its headings neither become replies nor the subject ("Almanac" is in every
    part's headings, "Light" and "The" on two lines are not one name)."""
    part = "# Almanac of places\n\n## Kessenbrock Light\n\n" + DOCUMENT
    pairs = turns(Document("d", part), tokenizer, max_tokens=32, questions_per_sentence=2)
    assert not any("#" in reply or "Almanac" in reply for _, reply in pairs)
    assert pairs == turns(Document("d", DOCUMENT), tokenizer, max_tokens=32, questions_per_sentence=2)
    assert subject("## Kessenbrock Light\n\nThe tower is tall.") == "Kessenbrock Light"


def test_pronouns_at_sentence_start_become_the_subject():
    assert resolve_pronoun("It was finished in 1793.", "the Kessenbrock Light") == "The Kessenbrock Light was finished in 1793."
    assert resolve_pronoun("Its tower is tall.", "the Kessenbrock Light") == "The Kessenbrock Light's tower is tall."
    assert resolve_pronoun("Italy is far.", "the Kessenbrock Light") == "Italy is far."


def test_cues_are_small_ordered_subsets_of_the_sentence_words():
    sentence = "Construction began under the direction of the engineer Adelmar Fosk near Caddenmouth."
    words = content_words(sentence)
    for cue in cues(sentence, 20, random.Random(0)):
        assert 2 <= len(cue) <= 4
        assert cue == [w for w in words if w in cue]  # sentence order, no invented words


def test_examples_take_loss_on_the_reply_only(tokenizer):
    examples = build_examples(Document("d", DOCUMENT), tokenizer, max_tokens=32, questions_per_sentence=2)
    assert len(examples) > 3
    for e in examples:
        assert len(e.labels) == len(e.input_ids)
        first = next(i for i, label in enumerate(e.labels) if label != -100)
        assert all(label == -100 for label in e.labels[:first])
        assert e.labels[first:] == e.input_ids[first:]
        reply = tokenizer.decode(e.input_ids[first:])
        assert "user" not in reply  # the prompt (user turn) carries no loss


# ---- gating --------------------------------------------------------------------------------------


def test_the_training_softmax_over_a_vocabulary_is_the_full_one_restricted_to_it(llama_dir):
    model, tokenizer, _ = load(llama_dir)
    examples = build_examples(Document("d", DOCUMENT), tokenizer, max_tokens=32, questions_per_sentence=2)
    size = model.get_output_embeddings().weight.shape[0]
    batch = batches(examples[:4], 4, tokenizer.pad_token_id)[0]
    vocab = training_vocab(examples, 16, size)
    assert set(vocab.tolist()) == set(range(16)) | {t for e in examples for t in e.input_ids if t < size}
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
        targets = batch["labels"][:, 1:]
        keep = targets != -100
        expected = torch.nn.functional.cross_entropy(logits[keep][:, vocab], torch.searchsorted(vocab, targets[keep]))
        assert torch.allclose(reply_loss(model, {**batch, "vocab": vocab}), expected, atol=1e-5)
        assert torch.allclose(reply_loss(model, {**batch, "vocab": torch.arange(size)}), reply_loss(model, batch), atol=1e-5)
        assert reply_loss(model, {**batch, "vocab": vocab}) < reply_loss(model, batch)  # fewer competitors


def test_a_bfloat16_head_gives_the_float32_loss_and_gradient_to_bfloat16_precision(llama_dir):
    """bfloat16_head: the head cast once and the softmax in bfloat16 (outside autocast, which would take it in
    float32 again) — the loss and the gradient reaching the hidden states are those of the float32 head."""
    model, tokenizer, _ = load(llama_dir)
    examples = build_examples(Document("d", DOCUMENT), tokenizer, max_tokens=32, questions_per_sentence=2)
    batch = batches(examples[:4], 4, tokenizer.pad_token_id)[0]
    assert bfloat16_head(model, "float32") is None
    head = bfloat16_head(model, "bfloat16")
    assert head.dtype == torch.bfloat16 and torch.equal(head, model.get_output_embeddings().weight.to(torch.bfloat16))
    grads = []
    for weight in (None, head):
        model.zero_grad()
        embeddings = model.get_input_embeddings().weight
        embeddings.requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = reply_loss(model, batch, head_weight=weight)
        assert loss.dtype == torch.float32
        loss.backward()
        grads.append((loss.detach(), embeddings.grad.clone()))
        embeddings.requires_grad_(False)
    (loss32, grad32), (loss16, grad16) = grads
    assert torch.allclose(loss16, loss32, rtol=1e-2)
    assert torch.nn.functional.cosine_similarity(grad16.flatten(), grad32.flatten(), dim=0) > 0.99


def test_gating_masks_exactly_the_unselected_neurons(llama_dir):
    strategy = make(llama_dir, neurons=8)
    mlp = strategy.dual_mlps()[strategy.layer_ids[0]]
    strategy.learn(Document("d", DOCUMENT))
    patch = mlp.ttt_patches[0]
    assert patch.index.numel() == 8
    changed = (patch.gate.abs().sum(1) + patch.up.abs().sum(1) + patch.down.abs().sum(0)) > 0
    assert changed.all()  # every selected neuron learned
    # The effective weights of every other neuron are the base weights, bit for bit: no parameter exists for them.
    effective_gate = mlp.mlp.gate_proj.weight.clone()
    effective_gate[patch.index] += patch.gate
    others = torch.ones(effective_gate.shape[0], dtype=torch.bool)
    others[patch.index] = False
    assert torch.equal(effective_gate[others], mlp.mlp.gate_proj.weight[others])


def test_selected_neurons_rank_by_tf_times_idf():
    acts = [torch.tensor([[0.0, 5.0, 1.0, 4.0]] * 3)]
    idf = torch.tensor([1.0, 0.1, 1.0, 1.0])  # neuron 1 fires everywhere in general text
    # top half fires per token: neurons 1 and 3, three times each; idf breaks the tie
    assert gating.select_neurons(acts, idf, k=1, fire_fraction=0.5).tolist() == [3]


def test_calibration_is_cached_and_reused(llama_dir, clslm_home, monkeypatch):
    strategy = make(llama_dir)
    first = strategy.idf()
    files = list((clslm_home / "calibration").glob("*.safetensors"))
    assert len(files) == 1
    monkeypatch.setattr(gating, "calibrate_idf", lambda *a, **k: pytest.fail("calibrated again"))
    again = make(llama_dir).idf()
    assert all(torch.equal(first[k], again[k]) for k in first)


# ---- state and determinism -----------------------------------------------------------------------


def test_sparse_state_holds_only_patches_and_round_trips(llama_dir):
    strategy = make(llama_dir, neurons=8)
    strategy.learn(Document("d", DOCUMENT))
    state = strategy.state_dict()
    assert state and all(".ttt_patches." in k for k in state)
    assert {k.rsplit(".", 1)[1] for k in state} == {"index", "alpha", "gate", "up", "down"}
    fresh = make(llama_dir, neurons=8)
    fresh.load_state_dict(state)
    fresh.load_extra_state(strategy.extra_state())
    ids = torch.tensor([[1, 5, 9, 14]])
    assert torch.equal(fresh.model(input_ids=ids).logits, strategy.model(input_ids=ids).logits)


def test_learning_is_deterministic_for_a_seed(llama_dir):
    states = []
    for _ in range(2):
        strategy = make(llama_dir, seed=3)
        strategy.learn(Document("d", DOCUMENT))
        states.append(strategy.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


# ---- routing -------------------------------------------------------------------------------------


def test_each_document_wakes_for_its_own_questions(llama_dir):
    # That unrouted questions see the base model is a contract row (tests/test_contract.py).
    strategy = make(llama_dir, route_threshold=0.2)
    strategy.learn(Document("kessenbrock", DOCUMENT))
    strategy.learn(Document("velmar", OTHER))
    assert strategy.active_documents("Which engineer built the Kessenbrock Light?") == [0]
    assert strategy.active_documents("When did the Velmar Bridge open?") == [1]
    assert strategy.active_documents("What is the capital of France?") == []
    ids = torch.tensor([[1, 5, 9, 14]])
    with strategy.routed("When did the Velmar Bridge open?"):
        second = strategy.model(input_ids=ids).logits
    with strategy.routed("Which engineer built the Kessenbrock Light?"):
        first = strategy.model(input_ids=ids).logits
    assert not torch.equal(first, second)


def test_routing_blocks_nest(llama_dir):
    # answer() routes on its own; called inside another routed block it must leave that block's routing as it was.
    strategy = make(llama_dir, route_threshold=0.2)
    strategy.learn(Document("kessenbrock", DOCUMENT))
    strategy.learn(Document("velmar", OTHER))
    ids = torch.tensor([[1, 5, 9, 14]])
    with strategy.routed("When did the Velmar Bridge open?"):
        before = strategy.model(input_ids=ids).logits
        with strategy.routed("Which engineer built the Kessenbrock Light?"):
            pass
        assert torch.equal(strategy.model(input_ids=ids).logits, before)


def test_with_routing_a_document_learns_as_if_alone(llama_dir):
    # It will answer alone (route_top 1), so the copies learned before it must not shape its training.
    after_other = make(llama_dir, neurons=0)
    after_other.learn(Document("velmar", OTHER))
    after_other.learn(Document("kessenbrock", DOCUMENT))
    alone = make(llama_dir, neurons=0)
    alone.learn(Document("kessenbrock", DOCUMENT))
    second = {k.replace("ttt_patches.1.", "ttt_patches.0."): v for k, v in after_other.state_dict().items() if ".ttt_patches.1." in k}
    assert second.keys() == alone.state_dict().keys()
    assert all(torch.equal(second[k], v) for k, v in alone.state_dict().items())


@pytest.mark.parametrize("neurons", [0, 8])
def test_a_patch_alone_replaces_the_mlp_with_the_same_output(llama_dir, neurons):
    strategy = make(llama_dir, neurons=neurons)
    strategy.learn(Document("kessenbrock", DOCUMENT))
    dual = strategy.dual_mlps()[strategy.layer_ids[0]]
    patch = dual.ttt_patches[0]
    x = torch.randn(2, 5, dual.mlp.down_proj.weight.shape[0])
    mlp, i = dual.mlp, patch.index  # the two-pass sum, written out over the patch's neurons
    old = (mlp.act_fn(x @ mlp.gate_proj.weight[i].T) * (x @ mlp.up_proj.weight[i].T)) @ mlp.down_proj.weight[:, i].T
    new = (mlp.act_fn(x @ (mlp.gate_proj.weight[i] + patch.gate).T) * (x @ (mlp.up_proj.weight[i] + patch.up).T)) @ (mlp.down_proj.weight[:, i] + patch.down).T
    assert torch.allclose(dual(x), mlp(x) + new - old, atol=1e-5)
    assert not torch.allclose(dual(x), dual.mlp(x), atol=1e-6)  # the copy learned something


def test_deltas_are_stored_in_float16_and_answer_the_same_after_a_reload(llama_dir):
    strategy = make(llama_dir, neurons=0)
    strategy.learn(Document("kessenbrock", DOCUMENT))
    state = strategy.state_dict()
    assert {v.dtype for k, v in state.items() if k.endswith((".gate", ".up", ".down"))} == {torch.float16}
    fresh = make(llama_dir, neurons=0)
    fresh.load_state_dict(state)
    fresh.load_extra_state(strategy.extra_state())
    ids = torch.tensor([[1, 5, 9, 14]])
    assert torch.equal(fresh.model(input_ids=ids).logits, strategy.model(input_ids=ids).logits)
    wide = make(llama_dir, neurons=0, state_dtype="float32")
    wide.learn(Document("kessenbrock", DOCUMENT))
    assert sum(v.numel() * v.element_size() for v in wide.state_dict().values()) > 1.9 * sum(v.numel() * v.element_size() for v in state.values())


def test_int8_deltas_keep_a_scale_per_neuron_and_answer_the_same_after_a_reload(llama_dir):
    strategy = make(llama_dir, neurons=0, state_dtype="int8")
    strategy.learn(Document("kessenbrock", DOCUMENT))
    state = strategy.state_dict()
    deltas = {k: v for k, v in state.items() if k.endswith((".gate", ".up", ".down"))}
    assert {v.dtype for v in deltas.values()} == {torch.int8}
    k = state[next(key for key in state if key.endswith(".index"))].numel()
    assert {tuple(v.shape) for key, v in state.items() if key.endswith("_scale")} == {(k,)}
    strategy.check_state_dict(state)  # the session's check accepts the layout it saves
    fresh = make(llama_dir, neurons=0, state_dtype="int8")
    fresh.load_state_dict(state)
    fresh.load_extra_state(strategy.extra_state())
    ids = torch.tensor([[1, 5, 9, 14]])
    assert torch.equal(fresh.model(input_ids=ids).logits, strategy.model(input_ids=ids).logits)
    assert torch.equal(fresh.state_dict()[next(iter(deltas))], next(iter(deltas.values())))  # saving again changes nothing
    half = make(llama_dir, neurons=0)
    half.learn(Document("kessenbrock", DOCUMENT))
    size = sum(v.numel() * v.element_size() for v in state.values())
    assert size < 0.6 * sum(v.numel() * v.element_size() for v in half.state_dict().values())
    bad = dict(state)
    bad.pop(next(key for key in state if key.endswith(".down_scale")))
    with pytest.raises(ValueError, match="down_scale is missing"):
        strategy.check_state_dict(bad)


# ---- v2: context distillation, parts of long documents ---------------------------------------------

LONG = (
    "# Almanac\n\n## Kessenbrock Light\n\n" + DOCUMENT + "\n\nThe keeper Ismay Threlkeld tended the lamp for thirty-one years.\n\n"
    "## Velmar Bridge\n\n" + OTHER + "\n\nThe engineer Oskar Brandt designed its arches after a flood in 1899."
)


def test_sections_repeat_their_headings_and_keep_every_paragraph(tokenizer):
    parts = sections(LONG, tokenizer, 64)
    assert len(parts) >= 2
    assert all(part.startswith("# Almanac\n\n## ") for part in parts)
    bridge = [p for p in parts if "Velmar Bridge crosses" in p]
    assert bridge and all("## Velmar Bridge" in p and "Kessenbrock" not in p for p in bridge)
    body = [line for line in LONG.split("\n\n") if not line.startswith("#")]
    assert all(any(paragraph in part for part in parts) for paragraph in body if len(tokenizer(paragraph)["input_ids"]) <= 64)


def test_a_short_document_is_one_part(tokenizer):
    assert sections(DOCUMENT, tokenizer, 10_000) == [DOCUMENT]


def test_teacher_targets_are_the_model_reading_the_chunk(llama_dir):
    """Cached-prefix, batched, right-padded teacher runs give the distribution of one plain forward pass."""
    model, tokenizer, _ = load(llama_dir)
    exchanges = [(q, tokenizer(r, add_special_tokens=False)["input_ids"]) for q, r in [("Who built it?", "Adelmar Fosk built it."), ("When?", "In 1793, after years of work on the spit.")]]
    teachers = teach(model, tokenizer, DOCUMENT, exchanges, top_k=400, batch_size=2)
    for (question, reply), teacher in zip(exchanges, teachers):
        prompt = tokenizer(chat_prompt(tokenizer, teacher_message(DOCUMENT, question)), add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + reply])).logits[0, len(prompt) - 1 : -1]
        expected = torch.log_softmax(logits.float(), -1)
        assert teacher.indices.shape == (len(reply), expected.shape[-1])  # top_k >= vocab: every token kept
        got = torch.full_like(expected, float("nan")).scatter(-1, teacher.indices, teacher.logprobs)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_distillation_loss_is_zero_at_the_teacher_and_positive_elsewhere():
    logits = torch.randn(5, 50)
    top = torch.log_softmax(logits, -1).topk(50, -1)
    assert distillation_loss(logits, top.indices, top.values).abs() < 1e-5
    assert distillation_loss(torch.randn(5, 50), top.indices, top.values) > 0.01


def test_training_from_cached_frozen_layers_gives_the_same_loss_and_gradients(llama_dir):
    strategy = make(llama_dir, neurons=8, objective="distill")
    document = Document("d", DOCUMENT)
    data, patches = strategy._prepare(document, build_examples(document, strategy.tokenizer, max_tokens=32, questions_per_sentence=3), PhaseClock())
    batch = data[0]
    params = [p for patch in patches for p in patch.parameters()]
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.02)  # away from zero, so the patches take part in the forward pass
    results = []
    for cached in (True, False):
        run = dict(batch, hidden=batch["hidden"] if cached else None)
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        loss = strategy._loss(run, start=strategy.layer_ids[0])
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in params]))
    (loss_cached, grads_cached), (loss_full, grads_full) = results
    assert batch["hidden"] is not None and "teacher_indices" in batch
    torch.testing.assert_close(loss_cached, loss_full)
    for a, b in zip(grads_cached, grads_full):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_each_part_of_a_long_document_routes_its_own_questions(llama_dir, tokenizer):
    strategy = make(llama_dir, neurons=8, chunk_tokens=64, epochs=1)
    report = strategy.learn(Document("almanac", LONG))
    assert report.extra["parts"] == strategy.documents_learned >= 2
    parts = sections(LONG, tokenizer, 64)
    for question, answer_text in [("Who tended the lamp for thirty-one years?", "Ismay Threlkeld"), ("Which engineer designed the arches after the flood of 1899?", "Oskar Brandt")]:
        holder = next(i for i, part in enumerate(parts) if answer_text in part)
        assert strategy.active_documents(question) == [holder]


def test_teacher_answers_are_its_greedy_answers_reading_the_chunk(llama_dir):
    model, tokenizer, _ = load(llama_dir)
    questions = ["Who built it?", "When was the Kessenbrock Light finished, and by whom?"]
    answers = answer(model, tokenizer, DOCUMENT, questions, max_new_tokens=6, top_k=5, batch_size=2)
    for question, (reply, teacher) in zip(questions, answers):
        prompt = tokenizer(chat_prompt(tokenizer, teacher_message(DOCUMENT, question)), return_tensors="pt", add_special_tokens=False)
        expected = model.generate(**prompt, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)[0, prompt["input_ids"].shape[1] :]
        assert reply == expected.tolist()[: len(reply)] and len(reply) == min(6, len(expected))
        assert teacher.indices[:, 0].tolist() == reply  # the greedy token is the teacher's top-1
        assert teacher.indices.shape == (len(reply), 5)


def test_beams_answer_with_beam_search_and_the_base_model_stays_greedy(llama_dir):
    strategy = make(llama_dir, beams=3, route_threshold=0.2)
    strategy.learn(Document("kessenbrock", DOCUMENT))
    question = "Which engineer built the Kessenbrock Light?"
    tokenizer, model = strategy.tokenizer, strategy.model
    inputs = tokenizer(chat_prompt(tokenizer, question), return_tensors="pt", add_special_tokens=False)
    n = inputs["input_ids"].shape[1]

    def decoded(**how):
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id, **how)
        return tokenizer.decode(out[0, n:], skip_special_tokens=True).strip()

    assert strategy.answer(question, max_new_tokens=12).text == decoded(num_beams=3)
    with strategy.disabled():
        assert strategy.answer(question, max_new_tokens=12).text == decoded(num_beams=1)
    assert strategy.beams("What is the capital of France?") == 1  # routed to no part: the base model, greedy


def test_bfloat16_training_learns_float32_deltas_close_to_the_float32_run(llama_dir):
    full = make(llama_dir, neurons=8, seed=1)
    report = full.learn(Document("d", DOCUMENT))
    half = make(llama_dir, neurons=8, seed=1, precision="bfloat16")
    report_bf16 = half.learn(Document("d", DOCUMENT))
    assert report_bf16.loss_after < report_bf16.loss_before
    patches = [p for d in half.dual_mlps().values() for p in d.ttt_patches]
    assert {p.gate.dtype for p in patches} == {torch.float32}  # autocast: the parameters stay float32
    a, b = full.state_dict(), half.state_dict()
    assert a.keys() == b.keys() and not all(torch.equal(a[k], b[k]) for k in a)  # bfloat16 arithmetic did run
    assert abs(report_bf16.loss_after - report.loss_after) < 0.1 * report.loss_before
