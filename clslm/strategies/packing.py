"""A batch of chat examples as one sequence: the prefix they share (the chat template's system header) runs
once, and each example attends to it and to itself.

Every example of a batch starts with the same ~24 tokens (SmolLM2's system header and the user turn's
opening); as padded rows they are a quarter of the tokens a learn runs through the trained layers. Packed,
the prefix is computed once per batch, padding disappears, and the loss and its gradients are those of the
padded rows (each token sees exactly the tokens it saw there, at the same positions).
"""

from __future__ import annotations

import torch

from ..generation import common_prefix


def pack(batch: dict[str, torch.Tensor], max_length: int | None = None) -> dict[str, torch.Tensor]:
    """The padded `batch` as one sequence with a block mask, or the batch itself where packing would change
    the loss: no shared unlabelled prefix, or (sliding-window models) a sequence longer than the window."""
    rows = _rows(batch)
    if len(rows) < 2:
        return batch
    shared = _shared_prefix(rows)
    total = shared + sum(len(ids) - shared for ids, _ in rows)
    if shared == 0 or (max_length is not None and total > max_length):
        return batch
    ids, labels, positions, segments = list(rows[0][0][:shared]), [-100] * shared, list(range(shared)), [0] * shared
    for n, (row_ids, row_labels) in enumerate(rows, start=1):
        ids += row_ids[shared:]
        labels += row_labels[shared:]
        positions += range(shared, len(row_ids))
        segments += [n] * (len(row_ids) - shared)
    packed = {k: v for k, v in batch.items() if k.startswith("teacher_")}  # labelled positions keep their order
    packed |= {
        "input_ids": torch.tensor([ids]),
        "labels": torch.tensor([labels]),
        "position_ids": torch.tensor([positions]),
        "attention_mask": _block_mask(torch.tensor(segments)),
    }
    return packed


def _rows(batch: dict[str, torch.Tensor]) -> list[tuple[list[int], list[int]]]:
    lengths = batch["attention_mask"].sum(-1).tolist()
    return [(batch["input_ids"][r, :n].tolist(), batch["labels"][r, :n].tolist()) for r, n in enumerate(lengths)]


def _shared_prefix(rows: list[tuple[list[int], list[int]]]) -> int:
    """Tokens every row starts with, none of them labelled, and the token after them unlabelled in every row
    (it is predicted from the shared prefix's last token, which a packed sequence does not place before it)."""
    shared = len(common_prefix([ids for ids, _ in rows]))
    shared = min([shared] + [next((i for i, t in enumerate(labels) if t != -100), len(labels)) for _, labels in rows])
    return shared if shared > 0 and all(shared < len(labels) and labels[shared] == -100 for _, labels in rows) else 0


def _block_mask(segments: torch.Tensor) -> torch.Tensor:
    """(1, 1, L, L) boolean mask: causal, and within an example's own tokens or the shared prefix (segment 0)."""
    n = segments.numel()
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    same = (segments[:, None] == segments[None, :]) | (segments[None, :] == 0)
    return (causal & same)[None, None]


def attention_mask_for(model, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A packed boolean mask in the form the model's attention takes a prepared 4D mask (eager adds it)."""
    if mask.ndim != 4 or getattr(model.config, "_attn_implementation", "sdpa") != "eager":
        return mask
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
