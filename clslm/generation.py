"""Chat prompts and greedy generation, with the token counts that show what was in the context."""

from __future__ import annotations

import time
from dataclasses import dataclass


# How a document is put in front of the model to be read (the bench's in-context setting, and the
# teacher of context distillation): this line, the document, then "Question: …".
READ_INSTRUCTION = "Read this document and answer the question."


@dataclass
class Answer:
    """One generated answer and exactly what the model saw."""

    text: str
    prompt: str
    prompt_tokens: int
    context_tokens: int
    seconds: float
    deltas: bool


def user_message(question: str, context: str = "") -> str:
    """The user turn: optional context (retrieved text, playbook) above the question."""
    return f"{context.strip()}\n\n{question}" if context.strip() else question


def chat_prompt(tokenizer, message: str, reply: str | None = None) -> str:
    """The model's chat template around one user turn (and optionally the assistant's reply)."""
    messages = [{"role": "user", "content": message}]
    if reply is not None:
        messages.append({"role": "assistant", "content": reply})
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=reply is None)
    text = f"Question: {message}\nAnswer:"
    return text if reply is None else f"{text} {reply}{tokenizer.eos_token or ''}"


def count_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text.strip() else 0


def generate(
    model,
    tokenizer,
    question: str,
    *,
    context: str = "",
    max_new_tokens: int = 64,
    logits_processors=(),
    deltas: bool = True,
    shared: "SharedPrefix | None" = None,
    beams: int = 1,
) -> Answer:
    """Greedy-decode (or beam-search, `beams` > 1) an answer to `question` (with `context` above it, if
    any), continuing from `shared`'s KV cache when the prompt starts with its tokens."""
    import torch
    from transformers import LogitsProcessorList

    prompt = chat_prompt(tokenizer, user_message(question, context))
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    start = time.perf_counter()
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=beams,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList(list(logits_processors)),
            **(shared.cache_for(inputs["input_ids"][0].tolist()) if shared is not None else {}),
        )
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return Answer(
        text=tokenizer.decode(new_tokens, skip_special_tokens=True).strip(),
        prompt=prompt,
        prompt_tokens=int(inputs["input_ids"].shape[1]),
        context_tokens=count_tokens(tokenizer, context),
        seconds=round(time.perf_counter() - start, 3),
        deltas=deltas,
    )


class SharedPrefix:
    """The KV cache of the first tokens many prompts share (one document read for many questions), so each
    answer runs only its own tokens; the same greedy answers as without it."""

    def __init__(self, model, tokenizer, prompts: list[str]):
        import torch

        from .strategies.anatomy import cache_of

        self.model = model
        ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        self.ids = common_prefix(ids)
        with torch.no_grad():
            self.cache = cache_of(model(input_ids=torch.tensor([self.ids], device=model.device), use_cache=True, logits_to_keep=1)) if self.ids else None

    def cache_for(self, prompt_ids: list[int]) -> dict:
        """generate()'s keyword for a prompt: a copy of the shared tokens' cache (generate grows it), or nothing."""
        import copy

        from .strategies.anatomy import cache_kwarg

        if self.cache is None or prompt_ids[: len(self.ids)] != self.ids:
            return {}
        return cache_kwarg(self.model, copy.deepcopy(self.cache))


def common_prefix(sequences: list[list[int]]) -> list[int]:
    """The longest token prefix all sequences share, leaving at least one token of each to run."""
    first, n = sequences[0], min(map(len, sequences)) - 1
    return next((first[:i] for i in range(n) if any(s[i] != first[i] for s in sequences)), first[:n])
