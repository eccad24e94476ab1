"""Packed training batches: the chat header once per batch, the same loss and gradients as padded rows."""

from __future__ import annotations

import pytest
import torch

from clslm.documents import Document
from clslm.strategies.packing import pack
from clslm.strategies.textbook import batches, build_examples
from clslm.strategies.training import PhaseClock

from conftest import DOCUMENT
from test_ttt import make


def test_a_packed_batch_holds_the_shared_prefix_once_and_each_example_sees_only_itself():
    batch = {
        "input_ids": torch.tensor([[7, 8, 1, 2, 0], [7, 8, 3, 4, 5]]),
        "labels": torch.tensor([[-100, -100, -100, 2, -100], [-100, -100, -100, 4, 5]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]),
    }
    packed = pack(batch)
    assert packed["input_ids"].tolist() == [[7, 8, 1, 2, 3, 4, 5]]
    assert packed["labels"].tolist() == [[-100, -100, -100, 2, -100, 4, 5]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 2, 3, 4]]
    mask = packed["attention_mask"][0, 0]
    assert mask[4].tolist() == [True, True, False, False, True, False, False]  # the header and itself, not row 1
    assert mask[1].tolist() == [True, True, False, False, False, False, False]


def test_a_labelled_token_right_after_the_shared_prefix_keeps_the_batch_padded():
    batch = {
        "input_ids": torch.tensor([[7, 8, 1], [7, 8, 3]]),
        "labels": torch.tensor([[-100, -100, 1], [-100, -100, 3]]),
        "attention_mask": torch.ones(2, 3, dtype=torch.long),
    }
    assert pack(batch) is batch


def _loss_and_grads(strategy, batch, params):
    for p in params:
        p.requires_grad_(True)
        p.grad = None
    loss = strategy._loss(batch, start=strategy.layer_ids[0])
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in params]


@pytest.mark.parametrize("objective", ["next-token", "distill"])
def test_packed_batches_give_the_loss_and_gradients_of_padded_rows(model_dir, objective):
    results = []
    for packed in (True, False):
        strategy = make(model_dir, neurons=8, objective=objective, pack=packed, seed=2)
        document = Document("d", DOCUMENT)
        examples = build_examples(document, strategy.tokenizer, max_tokens=32, questions_per_sentence=3)
        data, patches = strategy._prepare(document, examples, PhaseClock())
        params = [p for patch in patches for p in patch.parameters()]
        torch.manual_seed(0)
        with torch.no_grad():
            for p in params:
                p.normal_(0, 0.02)  # away from zero, so the patches take part in the forward pass
        results.append((data[1], _loss_and_grads(strategy, data[1], params)))
    (packed_batch, (loss_packed, grads_packed)), (padded_batch, (loss_padded, grads_padded)) = results
    windowed = getattr(make(model_dir).model.config, "sliding_window", None)
    assert ("position_ids" in packed_batch) == (windowed is None or packed_batch["input_ids"].shape[1] <= windowed)
    assert packed_batch["input_ids"].numel() <= padded_batch["input_ids"].numel()
    torch.testing.assert_close(loss_packed, loss_padded, atol=1e-5, rtol=1e-4)
    for a, b in zip(grads_packed, grads_padded):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
