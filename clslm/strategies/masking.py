"""The masked-token objective's inputs: a share of a batch's reply tokens replaced by a mask token (ttt-linear)."""

from __future__ import annotations

import torch


def mask_replies(batch: dict, ratio: float, mask_id: int, generator: torch.Generator) -> dict:
    """The batch with `ratio` of its reply tokens replaced by `mask_id`; loss is kept only there (ratio 0: the
    batch itself, loss on every reply token)."""
    if ratio <= 0:
        return batch
    reply = batch["labels"] != -100
    chosen = reply & (torch.rand(reply.shape, generator=generator) < ratio).to(reply.device)
    return batch | {"input_ids": torch.where(chosen, mask_id, batch["input_ids"]), "labels": torch.where(chosen, batch["labels"], -100)}


def mask_token_id(tokenizer, vocab: int) -> int:
    """The tokenizer's mask token, else another special token the model has an embedding for."""
    for token_id in (tokenizer.mask_token_id, tokenizer.unk_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None and 0 <= token_id < vocab:
            return int(token_id)
    return 0
