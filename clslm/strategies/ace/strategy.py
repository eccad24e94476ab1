"""The `ace` strategy: Generator → Reflector → Curator over each chunk of a document; the relevant
bullets go above the question."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from ...documents import Document, split_chunks
from ...generation import count_tokens
from ..base import LearnReport, Step, StepCallback, Strategy, noop
from ..llm_client import InProcessClient, LLMClient, Messages, OllamaClient, OpenAIClient, ollama_url
from ..router import Router
from ..tfidf import rank
from .config import AceConfig
from .grounding import extract, grounded, questions_of
from .playbook import Playbook
from .prompts import InvalidReply, curator_task, delta_schema, generator_task, lessons_schema, messages, parse_delta, parse_lessons, reflector_task, retry_messages

SERVER_REPLY_TOKENS = 512  # reply_tokens=0: a server's model writes whole deltas
LOCAL_REPLY_TOKENS = 64  # in-process, replies are the cost (each token is a forward pass on the CPU)


def within_budget(bullets: list[dict[str, Any]], count, budget: int) -> list[dict[str, Any]]:
    """The leading bullets whose lines together fit in `budget` tokens (as `count` counts them)."""
    chosen: list[dict[str, Any]] = []
    for bullet in bullets:
        if count("\n".join(f"- {b['text']}" for b in [*chosen, bullet])) > budget:
            break
        chosen.append(bullet)
    return chosen


class Ace(Strategy):
    """A playbook of short bullets curated from documents by Generator → Reflector → Curator."""

    name = "ace"
    Config = AceConfig
    paper = "2510.04618"
    summary = "curates a bounded playbook of short bullets (Generator → Reflector → Curator delta patches); relevant bullets go above the question"

    def attach(self) -> None:
        self.playbook = Playbook(self.config.max_bullets, self.config.max_bullet_chars)
        self._client: LLMClient | None = None

    @property
    def client(self) -> LLMClient:
        if self._client is None:
            self._client = make_client(self.config, self.model, self.tokenizer)
        return self._client

    @client.setter
    def client(self, value: LLMClient) -> None:
        self._client = value

    # ---- learning --------------------------------------------------------------------------------
    def learn(self, document: Document, on_step: StepCallback = noop) -> LearnReport:
        start = time.perf_counter()
        chunks = split_chunks(self.tokenizer, document.text, self.config.chunk_tokens, 0)
        stats: Counter = Counter()
        for i, chunk in enumerate(chunks):
            self.learn_chunk(chunk, document.sha256, i, stats)
            on_step(Step(i + 1, len(chunks), phase="curate"))
        tokens = count_tokens(self.tokenizer, document.text)
        extra = {"chunks": len(chunks), "bullets": len(self.playbook.bullets), **{k: v for k, v in sorted(stats.items()) if v}}
        if note := warning(stats, len(chunks)):
            extra["warning"] = note
        return LearnReport(document.name, document.sha256, tokens, None, None, round(time.perf_counter() - start, 2), extra)

    def learn_chunk(self, chunk: str, doc: str, index: int, stats: Counter) -> None:
        """Generator → Reflector → Curator on one chunk; the delta's grounded operations are merged; when
        none is usable (or with extract=always) the chunk's own sentences are added."""
        c = self.config
        shown = self.shown_bullets(chunk)
        drafts = self.client.chat(messages(chunk, shown, generator_task(c.questions)))
        lessons = self._json_call(
            messages(chunk, shown, reflector_task(drafts, c.max_bullet_chars)),
            lessons_schema(c.max_ops, c.max_bullet_chars),
            lambda reply: parse_lessons(reply, c.max_ops, c.max_bullet_chars),
            stats,
        )
        ops = self.curate(chunk, shown, lessons, stats) if lessons else None
        kept = self.ground(ops or [], chunk, stats)
        stats.update(self.playbook.apply(kept, doc, index))
        usable = lessons == [] or any(op["op"] != "remove" for op in kept)  # no lessons: nothing was missing
        stats["fallback_chunks"] += not usable
        if c.extract == "always" or (not usable and c.extract == "fallback"):
            pointers = [s.split(": ", 1)[-1] for s in lessons or []] + questions_of(drafts)
            self.add_extractive(extract(chunk, pointers, c.max_bullet_chars, c.extract == "always"), doc, index, stats)

    def curate(self, chunk: str, shown: list[dict[str, Any]], lessons: list[str], stats: Counter) -> list[dict[str, str]] | None:
        """The Curator's delta for the lessons; None (counted as dropped) when both tries were invalid."""
        c, ids = self.config, [b["id"] for b in shown]
        ops = self._json_call(
            messages(chunk, shown, curator_task(lessons, c.max_ops, c.max_bullet_chars)),
            delta_schema(ids, c.max_ops, c.max_bullet_chars),
            lambda reply: parse_delta(reply, ids, c.max_ops, c.max_bullet_chars),
            stats,
        )
        if ops is None:
            stats["dropped_deltas"] += 1
        return ops

    def ground(self, ops: list[dict[str, str]], chunk: str, stats: Counter) -> list[dict[str, str]]:
        """The operations whose text the chunk supports (removes always: they state nothing); counts
        kept and rejected adds and updates."""
        kept = []
        for op in ops:
            ok = op["op"] == "remove" or grounded(op["text"], chunk, self.config.grounding)
            if op["op"] != "remove":
                stats["kept" if ok else "rejected"] += 1
            kept += [op] if ok else []
        return kept

    def add_extractive(self, texts: list[str], doc: str, index: int, stats: Counter) -> None:
        """The chunk's sentences as bullets (deduplicated, within max_bullets): counted as extractive."""
        done = self.playbook.apply([{"op": "add", "id": "", "text": t} for t in texts], doc, index)
        stats["extractive"] += done.pop("added", 0)
        stats.update(done)

    def _json_call(self, base: Messages, schema: dict[str, Any], parse, stats: Counter):
        """The parsed reply, asking once more after an invalid one; None when both are invalid."""
        prompt = base
        for _ in range(2):
            reply = self.client.chat(prompt, schema=schema)
            try:
                return parse(reply)
            except InvalidReply as error:
                stats["invalid_replies"] += 1
                prompt = retry_messages(base, reply, error)
        return None

    def shown_bullets(self, chunk: str) -> list[dict[str, Any]]:
        """Bullets related to the chunk (the only ones a delta may update or remove), within llm_budget."""
        ranked = [self.playbook.bullets[i] for i in rank([b["text"] for b in self.playbook.bullets], chunk)]
        return within_budget(ranked[: self.config.k], self.client.count_tokens, self.config.llm_budget)

    # ---- answering -------------------------------------------------------------------------------
    def relevant(self, question: str) -> list[dict[str, Any]]:
        """The k bullets most similar to the question that fit in `budget` model tokens, best first; none
        when no bullet's router match with the question reaches route_threshold (a general question)."""
        if not self.routes(question):
            return []
        ranked = [self.playbook.bullets[i] for i in rank([b["text"] for b in self.playbook.bullets], question)]
        return within_budget(ranked[: self.config.k], lambda text: count_tokens(self.tokenizer, text), self.config.budget)

    @property
    def router(self) -> Router:
        """The playbook's routing keys (router.py), one unit for all bullets; rebuilt when the bullets change."""
        texts = tuple(b["text"] for b in self.playbook.bullets)
        if getattr(self, "_routed_texts", None) != texts:
            self._router, self._routed_texts = Router(self.config), texts
            if texts:
                self._router.add("\n\n".join(texts))
        return self._router

    def routes(self, question: str) -> bool:
        """Whether the question names what some bullet is about (router.py's rarity-weighted match)."""
        return bool(self.playbook.bullets) and self.router.matches(question)

    def answer_group(self, question: str) -> tuple:
        """Every question is answered alike: its routed bullets (or none) above it, greedily (the bench batches them)."""
        return ("notes",)

    def answers_plainly(self, question: str) -> bool:
        """No bullet for the question: it is the base model's greedy answer (the bench batches those)."""
        return not self.prompt_context(question)

    def prompt_context(self, question: str) -> str:
        bullets = self.relevant(question)
        return "Notes:\n" + "\n".join(f"- {b['text']}" for b in bullets) if bullets else ""

    # ---- state -----------------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"playbook": self.playbook.to_dict()}

    def check_extra_state(self, state: dict[str, Any]) -> None:
        Playbook.check(state.get("playbook"))

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.playbook = Playbook.from_dict(state.get("playbook"), self.config.max_bullets, self.config.max_bullet_chars)

    def forget(self, documents: list[dict[str, Any]], position: int) -> None:
        """Drop the bullets the document wrote last (a bullet a later document updated is that one's)."""
        sha256 = documents[position].get("sha256")
        self.playbook.bullets = [b for b in self.playbook.bullets if b["doc"] != sha256]

    def context_markdown(self, extra: dict[str, Any]) -> list[str]:
        bullets = (extra.get("playbook") or {}).get("bullets", [])
        return ["## Playbook", "", *(f"- {b['text']}" for b in bullets), ""] if bullets else super().context_markdown(extra)

    def describe(self) -> dict[str, Any]:
        return {"backend": backend_name(self.config), "bullets": len(self.playbook.bullets), "documents": len({b["doc"] for b in self.playbook.bullets})}


def warning(stats: Counter, chunks: int) -> str:
    """A line for stderr when the backend's replies were garbage or its bullets ungrounded ('' otherwise)."""
    if not stats["fallback_chunks"]:
        return ""
    why = f"{stats['invalid_replies']} replies not usable, {stats['rejected']} bullets not found in the document"
    return f"{stats['fallback_chunks']} of {chunks} chunks had no usable delta from the LLM ({why}); {stats['extractive']} bullets are the document's own sentences"


def backend_name(config: AceConfig) -> str:
    if config.llm_url:
        return f"openai-compatible {config.llm_url} ({config.llm_model or 'default'})"
    if config.llm_model:
        return f"ollama {ollama_url(config.ollama_url)} ({config.llm_model})"
    return "in-process"


def make_client(config: AceConfig, model, tokenizer) -> LLMClient:
    """llm_url → OpenAI-compatible server; llm_model alone → Ollama; neither → the session's own model."""
    if not config.llm_url and not config.llm_model:
        return InProcessClient(model, tokenizer, max_tokens=config.reply_tokens or LOCAL_REPLY_TOKENS)
    options = dict(timeout=config.timeout, seed=config.seed, max_tokens=config.reply_tokens or SERVER_REPLY_TOKENS)
    if config.llm_url:
        return OpenAIClient(config.llm_url, config.llm_model, **options)
    return OllamaClient(config.ollama_url, config.llm_model, **options)
