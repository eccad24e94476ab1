"""How doc2lora shows the frozen model a document: prompt pieces, chunks, per-layer activations.

The document is read in the prompt the bench uses for "document in the prompt" (the chat template around
`Read this document and answer the question.` + document), so the activations the hypernetwork reads at
learn time are exactly those of the in-context teacher it was trained to imitate.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ...documents import split_sentences
from ...generation import READ_INSTRUCTION as INSTRUCTION
from ...generation import chat_prompt
from ..anatomy import cache_kwarg, cache_of
from .lora import unwrap

_SLOT = "\x00slot\x00"


@dataclass(frozen=True)
class Template:
    """The chat template around one user message: head + message + tail (tail ends where the reply starts)."""

    head: str
    tail: str

    @classmethod
    def of(cls, tokenizer) -> "Template":
        head, tail = chat_prompt(tokenizer, _SLOT).split(_SLOT)
        return cls(head, tail)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def reader_prefix(tokenizer) -> list[int]:
    """Tokens before the document in the in-context prompt."""
    return ids(tokenizer, Template.of(tokenizer).head + INSTRUCTION + "\n\n")


def chunks(tokenizer, text: str, size: int) -> list[list[int]]:
    """The document's tokens in chunks of at most `size`, cut between sentences where a sentence allows."""
    pieces = []
    for sentence in split_sentences(text):
        tokens = ids(tokenizer, (" " if pieces else "") + sentence)
        pieces += [tokens[i : i + size] for i in range(0, len(tokens), size)]
    out: list[list[int]] = []
    for piece in pieces:
        if out and len(out[-1]) + len(piece) <= size:
            out[-1] = out[-1] + piece
        else:
            out.append(list(piece))
    return out


def decoder(model):
    """The transformer stack without the LM head (hidden states only)."""
    return unwrap(model).base_model


@dataclass
class Reading:
    """What the hypernetwork sees of one chunk, all at the chunk's tokens."""

    hidden: torch.Tensor  # (layers, tokens, d_model): hidden states entering each target layer
    inputs: list[torch.Tensor]  # per target module (layer-major): (tokens, d_in), what the module reads
    following: torch.Tensor  # (tokens, d_model): output embedding of the next token (zeros after the last)


@contextmanager
def capturing(model, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward pass records the input of each named module."""
    base, seen = unwrap(model), {}
    hooks = [base.get_submodule(n).register_forward_hook(lambda m, args, out, n=n: seen.__setitem__(n, args[0].detach())) for n in names]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def reading(model, hidden_states, seen: dict[str, torch.Tensor], start: int, chunk: list[int], layers: list[int], names: list[str]) -> Reading:
    """A Reading from one forward pass over prefix + chunk (the chunk begins at position `start`)."""
    end = start + len(chunk)
    embeddings = unwrap(model).get_output_embeddings().weight
    following = torch.zeros(len(chunk), embeddings.shape[1], device=embeddings.device)
    if len(chunk) > 1:
        following[:-1] = embeddings[torch.tensor(chunk[1:], device=embeddings.device)].float()
    hidden = torch.stack([hidden_states[layer][0, start:end] for layer in layers]).float()
    return Reading(hidden, [seen[n][0, start:end].float() for n in names], following)


@torch.no_grad()
def read(model, prefix: list[int], chunk: list[int], layers: list[int], names: list[str]) -> Reading:
    """One forward pass of the transformer stack over prefix + chunk."""
    return read_chunks(model, prefix, [chunk], layers, names)[0]


@torch.no_grad()
def read_chunks(model, prefix: list[int], pieces: list[list[int]], layers: list[int], names: list[str]) -> list[Reading]:
    """Each chunk read after the same prefix, whose keys and values are computed once (a copy per chunk)."""
    stack, device = decoder(model), unwrap(model).device
    cache = cache_of(stack(input_ids=torch.tensor([prefix], device=device), use_cache=True))
    readings = []
    for piece in pieces:
        with capturing(model, names) as seen:
            out = stack(input_ids=torch.tensor([piece], device=device), output_hidden_states=True, use_cache=True, **cache_kwarg(stack, copy.deepcopy(cache)))
        readings.append(reading(model, out.hidden_states, seen, 0, piece, layers, names))
    return readings

