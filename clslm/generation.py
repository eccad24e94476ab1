"""Chat prompts and greedy generation (one prompt, or many in left-padded batches), with the token counts that
show what was in the context."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


# How a document is put in front of the model to be read (the bench's in-context setting, and the
# teacher of context distillation): this line, the document, then "Question: …".
READ_INSTRUCTION = "Read this document and answer the question."
# model.generate settings of a deterministic answer (the model's own sampling defaults switched off)
GREEDY = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


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
            num_beams=beams,
            **GREEDY,
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

    def batch_cache(self, rows: int) -> dict:
        """generate()'s keyword for `rows` prompts that all start with the shared tokens: the cache repeated per row."""
        import copy

        from .strategies.anatomy import cache_kwarg

        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(rows)
        return cache_kwarg(self.model, cache)

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


# ---- many prompts at once ------------------------------------------------------------------------------
def generate_batch(
    model,
    tokenizer,
    questions: list[str],
    *,
    contexts: list[str] | None = None,
    max_new_tokens: int = 64,
    deltas: bool = True,
    shared: SharedPrefix | None = None,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
    beams: int = 1,
    processors: list[list] | None = None,
) -> list[Answer]:
    """Greedy (or `beams`-wide beam search) answers to many questions, `batch_size` prompts per
    model.generate, left-padded: the same answers as generate() one at a time (tests/test_batched.py) for a
    fraction of the time per answer. `processors`: each question's own logits processors, applied to its row
    only (processors that read nothing but their row's tokens and scores). Prompts of similar length share a batch (less padding);
    a batch whose prompts all start with `shared`'s tokens continues from its cache. An answer's `seconds`
    is its batch's time divided among its prompts; `progress(done)` after each batch."""
    contexts = contexts if contexts is not None else [""] * len(questions)
    prompts = [chat_prompt(tokenizer, user_message(q, c)) for q, c in zip(questions, contexts, strict=True)]
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    answers: list[Answer | None] = [None] * len(ids)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        began = time.perf_counter()
        rows = _PerRow([processors[i] for i in batch], beams) if processors and any(processors[i] for i in batch) else None
        replies = _rows(model, tokenizer, [ids[i] for i in batch], max_new_tokens, shared, beams, rows)
        seconds = round((time.perf_counter() - began) / len(batch), 3)
        for i, reply in zip(batch, replies):
            text = tokenizer.decode(reply, skip_special_tokens=True).strip()
            answers[i] = Answer(text, prompts[i], len(ids[i]), count_tokens(tokenizer, contexts[i]), seconds, deltas)
        if progress is not None:
            progress(start + len(batch))
    return answers  # type: ignore[return-value]


def _rows(model, tokenizer, rows: list[list[int]], max_new_tokens: int, shared: SharedPrefix | None, beams: int = 1, processor=None) -> list[list[int]]:
    """Each row's new tokens (up to and with its first stop token) from one model.generate (beam search keeps
    `beams` hypotheses per row, each row's own).

    Rows are left-padded; with a shared prefix the padding sits between the prefix (cached) and each row's
    own tokens. The attention mask hides the padding and position ids count only real tokens, so each row
    sees what it would see alone. A sliding window counts cache slots, padding included: padding in the middle
    would hide real tokens from it, so models with one do not continue from the shared cache here."""
    import torch
    from transformers import LogitsProcessorList

    cached = shared is not None and shared.cache is not None and not sliding_window(model) and beams == 1  # a cache per row, not per beam
    prefix = shared.ids if cached and all(r[: len(shared.ids)] == shared.ids for r in rows) else []  # type: ignore[union-attr]
    tails = [r[len(prefix) :] for r in rows]
    width, pad = max(map(len, tails)), pad_id(model, tokenizer)
    input_ids = torch.tensor([prefix + [pad] * (width - len(t)) + t for t in tails], device=model.device)
    mask = torch.tensor([[1] * len(prefix) + [0] * (width - len(t)) + [1] * len(t) for t in tails], device=model.device)
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            num_beams=beams,
            **GREEDY,
            pad_token_id=pad,
            **({"logits_processor": LogitsProcessorList([processor])} if processor is not None else {}),
            **(shared.batch_cache(len(rows)) if prefix else {}),
        )
    stops = stop_tokens(model)
    return [_through_first(row.tolist(), stops) for row in output[:, input_ids.shape[1] :]]


class _PerRow:
    """A logits processor for a batch: each row's own processors on its slice (a row is `beams` hypotheses)."""

    def __init__(self, rows: list[list], beams: int):
        self.rows, self.beams = rows, beams

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for r, processors in enumerate(self.rows):
            part = slice(r * self.beams, (r + 1) * self.beams)
            for processor in processors:
                scores[part] = processor(input_ids[part], scores[part])
        return scores


def sliding_window(model) -> bool:
    """Whether some attention layer sees only a window of the latest positions (Gemma 3, Mistral)."""
    config = getattr(model, "config", None)
    types = set(getattr(config, "layer_types", None) or [])
    if types:
        return any("sliding" in t for t in types)
    return getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True) is not False


def pad_id(model, tokenizer) -> int:
    """The token padding is written with (never seen: the attention mask hides it)."""
    for value in (tokenizer.pad_token_id, model.generation_config.pad_token_id, *sorted(stop_tokens(model)), tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def stop_tokens(model) -> set[int]:
    """The token ids model.generate stops a row at (its generation config's eos)."""
    eos = model.generation_config.eos_token_id
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}


def _through_first(tokens: list[int], stops: set[int]) -> list[int]:
    """The tokens up to and with the first stop token (what generate() returns for the row alone)."""
    return next((tokens[: i + 1] for i, t in enumerate(tokens) if t in stops), tokens)
