"""jitrl-mvp — learning that acts only while answering (after JitRL, arXiv 2601.18510), through the prompt.

No weight changes: the model's forward pass is the base model's, and what was learned reaches the answer
through the prompt and a LogitsProcessor, which `disabled()` switches off. Each document is kept as
token-bounded chunks (documents.split_chunks). A question retrieves the best chunks of the documents the
router matches by TF-IDF (tfidf.py); they go above the question within a token budget (the question is
never cut), and tokens that occur in them get a bounded logit bias. jitrl-full (jitrl_full.py) is its
hidden-state counterpart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from ..documents import Document, split_chunks
from ..errors import InputError
from ..generation import count_tokens, user_message
from ..state_files import need
from .base import LearnReport, Step, StepCallback, Strategy, noop, timed_report
from .config import StrategyConfig, option
from .forgetting import reported_counts, share
from .router import DocumentKeys, Router, threshold_option
from .tfidf import TfidfIndex

MAX_BIAS = 5.0


@dataclass
class JitrlMVPConfig(StrategyConfig):
    """jitrl-mvp options (-o KEY=VALUE)."""

    k: int = option(1, "chunks retrieved per question", min=1)
    chunk_tokens: int = option(256, "longest chunk, in model tokens", min=8)
    overlap: int = option(64, "tokens a chunk shares with the previous one (< chunk_tokens)", min=0)
    bias: float = option(1.0, "logit bonus for tokens that occur in the retrieved chunks (0: none)", min=0, max=MAX_BIAS)
    budget: int = option(1024, "most tokens of the user message: retrieved chunks plus the whole question", min=1)
    route_threshold: float = threshold_option("only documents whose router match (router.py) with the question reaches this are searched (0: all)")

    def __post_init__(self):
        super().__post_init__()
        self.check(self.overlap < self.chunk_tokens, "overlap must be >= 0 and < chunk_tokens")


def _after_overlap(previous: str, text: str) -> str:
    """`text` without the sentences it repeats from the end of `previous` (chunk overlap)."""
    for cut in range(len(text), 0, -1):
        if text[cut - 1] in ".!?\"')" and previous.endswith(text[:cut]):
            return text[cut:].strip()
    return text


def stop_ids(model, tokenizer) -> set[int]:
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = set() if ids is None else {ids} if isinstance(ids, int) else set(ids)
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


class TokenBias(LogitsProcessor):
    """Adds `bias` (at most MAX_BIAS) to the logits of a fixed set of token ids."""

    def __init__(self, ids: torch.Tensor, bias: float):
        self.ids, self.bias = ids, min(float(bias), MAX_BIAS)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[:, self.ids.to(scores.device)] += self.bias
        return scores


class JitrlMVP(Strategy):
    """TF-IDF retrieval of document chunks into the prompt, plus a bounded bias toward their tokens."""

    name = "jitrl-mvp"
    Config = JitrlMVPConfig
    paper = "2601.18510"
    summary = "retrieves TF-IDF-ranked document chunks into the prompt, with a bounded logit bias toward their tokens"

    def attach(self) -> None:
        self.chunks: list[dict[str, str]] = []  # {"document": name, "text": chunk}
        self.router = Router(self.config, named=True)  # one unit per document name
        self._index: TfidfIndex | None = None  # the chunks' TF-IDF, fitted at the first question

    def learn(self, document: Document, on_step: StepCallback = noop) -> LearnReport:
        start = time.perf_counter()
        texts = split_chunks(self.tokenizer, document.text, self.config.chunk_tokens, self.config.overlap)
        self.chunks += [{"document": document.name, "text": t} for t in texts]
        self.router.put(document.name, self._keys_from_chunks(document.name))
        self._index = None
        on_step(Step(1, 1, phase="chunk"))
        return timed_report(document, self.tokenizer, start, chunks=len(texts))

    # ---- retrieval -----------------------------------------------------------------------------
    def _fitted(self) -> TfidfIndex:
        if self._index is None:
            self._index = TfidfIndex([c["text"] for c in self.chunks])
        return self._index

    def routed_documents(self, question: str) -> set[str]:
        """Documents the question matches well enough to search: general questions find none."""
        return self.router.matching_names(question)

    def retrieve(self, question: str) -> list[int]:
        """Indices of the k chunks of routed documents most similar to the question (cosine > 0), best first."""
        if not self.chunks:
            return []
        scores = self._fitted().scores(question)
        if scores is None:  # the chunks hold nothing but stop words
            return []
        routed = self.routed_documents(question)
        candidates = [i for i, c in enumerate(self.chunks) if scores[i] > 0 and c["document"] in routed]
        return sorted(candidates, key=lambda i: -scores[i])[: self.config.k]

    def selected(self, question: str) -> list[int]:
        """Retrieved chunks that fit in the budget beside the whole question, in document order."""
        budget = self.config.budget
        n = count_tokens(self.tokenizer, question)
        if n > budget:
            raise InputError(f"jitrl-mvp: the question is {n} tokens, over the budget of {budget}; the question is never cut, so raise -o budget")
        chosen: list[int] = []
        for i in self.retrieve(question):
            trial = sorted(chosen + [i])
            if count_tokens(self.tokenizer, user_message(question, self._join(trial))) <= budget:
                chosen = trial
        return chosen

    def _join(self, indices: list[int]) -> str:
        texts = []
        for prev, i in zip([None, *indices], indices):
            text = self.chunks[i]["text"]
            if prev == i - 1 and self.chunks[prev]["document"] == self.chunks[i]["document"]:
                texts[-1] += " " + _after_overlap(self.chunks[prev]["text"], text)  # adjacent chunks: read on
            else:
                texts.append(text)
        return "\n\n".join(t.strip() for t in texts)

    # ---- answering -----------------------------------------------------------------------------
    def prompt_context(self, question: str) -> str:
        return self._join(self.selected(question))

    def answer_group(self, question: str) -> tuple:
        """Every question is answered alike: its retrieved chunks above it, its token bias on its own row."""
        return ("retrieved",)

    def answers_plainly(self, question: str) -> bool:
        """No chunk retrieved: no context, no bias (and no injected module: routed() does nothing here)."""
        return not self.selected(question)

    def logits_processors(self, question: str) -> list:
        context = self.prompt_context(question)
        if not context or self.config.bias == 0:
            return []
        ids = set(self.tokenizer(context, add_special_tokens=False)["input_ids"])
        # Stop tokens get the bias too: otherwise every chunk token gains on them and answers ramble on.
        ids |= stop_ids(self.model, self.tokenizer)
        return [TokenBias(torch.tensor(sorted(ids), device=self.model.device), self.config.bias)]

    # ---- state ---------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {"chunks": self.chunks, "keys": self.router.to_json()} if self.chunks else {}

    def check_extra_state(self, state: dict) -> None:
        chunks = state.get("chunks", [])
        need(isinstance(chunks, list), "chunks must be a list")
        for chunk in chunks:
            need(isinstance(chunk, dict) and isinstance(chunk.get("document"), str) and isinstance(chunk.get("text"), str), "a chunk needs a string document and text")
        self.router.check_saved(state)

    def load_extra_state(self, state: dict) -> None:
        chunks = state.get("chunks", [])
        if not all(isinstance(c, dict) and isinstance(c.get("text"), str) for c in chunks):
            raise InputError("jitrl-mvp: saved chunks are malformed")
        self.chunks, self._index = list(chunks), None
        saved = state.get("keys", {})
        for name in dict.fromkeys(c["document"] for c in self.chunks):  # sessions saved before routing: rebuild
            self.router.put(name, DocumentKeys.from_json(saved[name]) if name in saved else self._keys_from_chunks(name))

    def _keys_from_chunks(self, name: str) -> DocumentKeys:
        return DocumentKeys.from_text(" ".join(c["text"] for c in self.chunks if c["document"] == name))

    def describe(self) -> dict:
        return {"chunks": len(self.chunks), "documents": len({c["document"] for c in self.chunks})}

    def context_markdown(self, extra: dict) -> list[str]:
        """The chunks under their document's name."""
        chunks, lines = extra.get("chunks", []), []
        for name in dict.fromkeys(c["document"] for c in chunks):
            lines += [f"## {name}", ""]
            lines += [part for c in chunks if c["document"] == name for part in (c["text"].strip(), "")]
        return lines or super().context_markdown(extra)

    def forget(self, documents: list[dict], position: int) -> None:
        """Drop the document's chunks; its routing keys go with them (rebuilt if a namesake stays)."""
        chunks = share(reported_counts(self.name, documents, "chunks", len(self.chunks)), position)
        name = documents[position]["name"]
        del self.chunks[chunks.start : chunks.stop]
        self._index = None
        self.router.pop(name)
        if any(c["document"] == name for c in self.chunks):
            self.router.put(name, self._keys_from_chunks(name))
