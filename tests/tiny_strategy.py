"""A strategy from outside clslm, in one file: what adding a strategy takes.

`notes` keeps each document's first sentences and puts them above the question. tests/test_contract.py
registers it (one registry line) and runs the whole contract table on it, as on the built-in strategies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

from clslm.documents import Document, split_sentences
from clslm.strategies.base import LearnReport, Step, StepCallback, Strategy, noop, timed_report
from clslm.strategies.config import StrategyConfig, option


@dataclass
class NotesConfig(StrategyConfig):
    sentences: int = option(2, "first sentences of each document kept as its note", min=1)
    max_chars: int = option(2000, "longest note", min=16)


class Notes(Strategy):
    """Each document's first sentences, above the question."""

    name = "notes"
    Config = NotesConfig
    summary = "keeps each document's first sentences and puts them above the question"
    test_options: ClassVar[dict[str, str]] = {"sentences": "3"}

    def attach(self) -> None:
        self.notes: list[dict[str, str]] = []

    def learn(self, document: Document, on_step: StepCallback = noop) -> LearnReport:
        start = time.perf_counter()
        note = " ".join(split_sentences(document.text)[: self.config.sentences])[: self.config.max_chars]
        self.notes.append({"document": document.name, "text": note})
        on_step(Step(1, 1, phase="note"))
        return timed_report(document, self.tokenizer, start, chars=len(note))

    def prompt_context(self, question: str) -> str:
        return "\n\n".join(n["text"] for n in self.notes)

    def extra_state(self) -> dict[str, Any]:
        return {"notes": self.notes} if self.notes else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.notes = list(state.get("notes", []))

    def forget(self, documents: list[dict[str, Any]], position: int) -> None:
        del self.notes[position]

    def describe(self) -> dict[str, Any]:
        return {"notes": len(self.notes)}
