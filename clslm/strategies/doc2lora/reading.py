"""How doc2lora shows the frozen model a document: prompt pieces, chunks, per-layer activations.

The document is read in the prompt the bench uses for "document in the prompt" (the chat template around
`Read this document and answer the question.` + document), so the activations the hypernetwork reads at
learn time are exactly those of the in-context teacher it was trained to imitate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...documents import split_sentences
from ...generation import chat_prompt
from .lora import unwrap

INSTRUCTION = "Read this document and answer the question."  # the bench's in-context prompt (bench.FACTS_INSTRUCTION)
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


@torch.no_grad()
def activations(model, prefix: list[int], chunk: list[int], layers: list[int]) -> torch.Tensor:
    """Hidden states entering each of `layers` at the chunk's tokens: (len(layers), len(chunk), d_model)."""
    device = unwrap(model).device
    input_ids = torch.tensor([prefix + chunk], device=device)
    hidden = decoder(model)(input_ids=input_ids, output_hidden_states=True, use_cache=False).hidden_states
    return torch.stack([hidden[layer][0, len(prefix) :] for layer in layers]).float()
