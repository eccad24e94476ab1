"""keys=tfidf for ttt-linear: each document's fast weights read only the neurons TF-IDF gating picks for it.

The keys are the frozen MLP's intermediate activations, as with keys=mlp, so W · k is a change to `down_proj`
— but a document's change to W may only write the columns of the neurons TF-IDF gating (gating.py, the same
selection ttt's neuron patches use) picks for that document: those its text fires much and general text
little, `neurons_per_token` per document token (at least 64; at most `neurons` when that is set). The other
columns get no gradient (AdamW with no weight decay leaves them exactly as they were; the delta rule's step
is masked alike), so a document's change is a few `down_proj` columns: it reads those neurons' activations
and nothing else, it folds into `down_proj` (merged export) and it is saved as its columns alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..errors import InputError
from .gating import cached_idf, neuron_activations, select_neurons

MIN_NEURONS = 64
COLUMNS = "fast_weight_columns."  # + document.layer: the neurons whose columns a document's change writes (saved)


def neuron_count(tokens: int, per_token: float, cap: int) -> int:
    """Neurons per layer a document's change may write: `per_token` per token (at least MIN_NEURONS), at most
    `cap` (0: no cap); with `per_token` 0, `cap` exactly."""
    if per_token <= 0:
        return cap
    count = max(MIN_NEURONS, round(per_token * tokens))
    return min(count, cap) if cap else count


def key_neurons(strategy, text: str) -> list[torch.Tensor]:
    """Per fast layer of a ttt-linear `strategy`: the sorted indices of the neurons TF-IDF gating picks for
    `text` (activations of the base model: the fast weights switched off)."""
    c = strategy.config
    with strategy.disabled():
        idf = cached_idf(strategy.model, strategy.tokenizer, strategy.layer_ids, c.fire_fraction, strategy.context)
        acts = neuron_activations(strategy.model, strategy.tokenizer, [text], strategy.layer_ids, chat=False)
    tokens = len(strategy.tokenizer(text, add_special_tokens=False)["input_ids"])
    count = neuron_count(tokens, c.neurons_per_token, c.neurons)
    return [select_neurons(acts[i], idf[i], count, c.fire_fraction) for i in strategy.layer_ids]


@contextmanager
def restricted(layers: list, columns: list[torch.Tensor] | None) -> Iterator[None]:
    """While inside, each fast layer's W learns only in `columns` (its neurons' `down_proj` columns): its
    `column_mask` is set, through which the layer's forward lets W's gradient reach those columns only
    (`only_columns`) and the delta rule masks its step. None: no restriction."""
    if columns is None:
        yield
        return
    for layer, index in zip(layers, columns):
        w = layer.fast_weight
        layer.column_mask = torch.zeros(w.shape[1], dtype=w.dtype, device=w.device).index_fill_(0, index.to(w.device), 1)
    try:
        yield
    finally:
        for layer in layers:
            layer.column_mask = None


def only_columns(w: torch.Tensor, column_mask: torch.Tensor | None) -> torch.Tensor:
    """W itself (bit for bit: x·1 + 0 and 0 + x·1), with a gradient only in the columns `column_mask` keeps."""
    if column_mask is None:
        return w
    return w * column_mask + (w * (1 - column_mask)).detach()


def column_state(changes: list[list[torch.Tensor]], columns: list[list[torch.Tensor]], prefix: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Each document's change to W saved as the columns it may write: PREFIX.d.i (width × n values) and
    COLUMNS.d.i (the n neuron indices)."""
    state = {}
    for d, (change, index) in enumerate(zip(changes, columns)):
        for i, (w, cols) in enumerate(zip(change, index)):
            state[f"{prefix}{d}.{i}"] = w[:, cols.to(w.device)].to(dtype).cpu().contiguous()
            state[f"{COLUMNS}{d}.{i}"] = cols.to(torch.int32).cpu()
    return state


def from_column_state(tensors: dict[str, torch.Tensor], prefix: str, changes: list[list[torch.Tensor]]) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """The changes (shaped as `changes`) and their columns back from column_state's tensors."""
    loaded, columns = [], []
    for d, change in enumerate(changes):
        dense, picked = [], []
        for i, like in enumerate(change):
            index, values = tensors[f"{COLUMNS}{d}.{i}"].long(), tensors[f"{prefix}{d}.{i}"]
            if values.shape != (like.shape[0], index.numel()) or (index.numel() and (index.min() < 0 or index.max() >= like.shape[1])):
                raise InputError(f"{prefix}{d}.{i}: columns {tuple(values.shape)} do not fit a fast weight of {tuple(like.shape)}")
            w = torch.zeros_like(like)
            w[:, index.to(w.device)] = values.float().to(w.device)
            dense.append(w)
            picked.append(index)
        loaded.append(dense)
        columns.append(picked)
    return loaded, columns


def placeholder_columns(saved, documents: int, layers: list) -> list[list[torch.Tensor]]:
    """Column indices of the saved counts (extra state "columns": per document, per layer, how many), to be
    filled by from_column_state: they give the saved tensors' expected shapes."""
    ok = isinstance(saved, list) and len(saved) == documents and all(
        isinstance(doc, list) and len(doc) == len(layers) and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= m.fast_weight.shape[1] for n, m in zip(doc, layers))
        for doc in saved
    )  # fmt: skip
    if not ok:
        raise ValueError(f"columns must list, per document ({documents}) and fast layer ({len(layers)}), how many neurons its change wrote")
    return [[torch.zeros(n, dtype=torch.long) for n in doc] for doc in saved]
