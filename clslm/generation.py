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
) -> Answer:
    """Greedy-decode an answer to `question` (with `context` above it, if any)."""
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
            num_beams=1,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList(list(logits_processors)),
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
