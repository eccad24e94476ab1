"""Training text made from a document: chat-formatted pieces with loss on the reply tokens only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..documents import Document, split_sentences
from ..generation import chat_prompt

# Generic user turns: the facts become things the model *says* in a chat, which is how it is asked later.
PROMPTS = (
    "What do you know about this?",
    "Tell me a fact you learned.",
    "What did you read?",
    "Recall what the document says.",
)


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss is taken


def pieces(document: Document, tokenizer, max_tokens: int) -> list[str]:
    """The document cut at sentence boundaries into pieces of at most ~max_tokens, then each sentence."""
    sentences = split_sentences(document.text) or [document.text.strip()]
    chunks, current = [], ""
    for sentence in sentences:
        candidate = f"{current} {sentence}".strip()
        if current and len(tokenizer(candidate, add_special_tokens=False)["input_ids"]) > max_tokens:
            chunks.append(current)
            candidate = sentence
        current = candidate
    chunks.append(current)
    return chunks + (sentences if len(sentences) > 1 else [])


def build_examples(document: Document, tokenizer, *, fmt: str = "chat", max_tokens: int = 128) -> list[Example]:
    """Examples to learn `document` from: chat turns (reply = a piece) or raw text windows."""
    examples = []
    for i, piece in enumerate(pieces(document, tokenizer, max_tokens)):
        if fmt == "raw":
            ids = tokenizer(piece, add_special_tokens=False)["input_ids"][: max_tokens * 2]
            examples.append(Example(ids, list(ids)))
            continue
        prompt = chat_prompt(tokenizer, PROMPTS[i % len(PROMPTS)])
        full = chat_prompt(tokenizer, PROMPTS[i % len(PROMPTS)], reply=piece)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        n = len(prompt_ids) if full_ids[: len(prompt_ids)] == prompt_ids else 0
        examples.append(Example(full_ids, [-100] * n + full_ids[n:]))
    return examples


def batches(examples: list[Example], batch_size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches of similar lengths (the composition stays fixed across epochs)."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out = []
    for start in range(0, len(order), batch_size):
        group = [examples[i] for i in order[start : start + batch_size]]
        width = max(len(e.input_ids) for e in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        labels = torch.full((len(group), width), -100, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, e in enumerate(group):
            n = len(e.input_ids)
            ids[row, :n], labels[row, :n], mask[row, :n] = torch.tensor(e.input_ids), torch.tensor(e.labels), 1
        out.append({"input_ids": ids, "labels": labels, "attention_mask": mask})
    return out


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose label is not -100."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    return torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1), ignore_index=-100)
