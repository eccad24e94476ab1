"""Routing keys: does a question match what a learned document says?

Per document we keep its sentences as weighted bags of words (keys, not the text). A question's score
for a document is the best cosine similarity between the question and one of its sentences. Words are
weighted by how unusual they are in everyday English (wordfreq's Zipf frequency, the idf of a very large
corpus): a document's own names dominate its sentences, so a general question that shares only common
words with them ("How many minutes are there in an hour?") scores low, while a question naming what the
document is about scores high. Hidden-state similarity does not separate the two (AUC < 0.6).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

from ..documents import split_sentences
from ..state_files import is_int, is_number, need
from .config import option
from .stop_words import ENGLISH_STOP_WORDS

# Zipf frequency is log10 of occurrences per billion words: about 7.7 for "the", 0 for a word never seen.
COMMONEST = 8.0
# The least score that routes a question to a document. Calibrated by benchmarks/router_threshold.py on
# dev-01..06 and general questions 1-100 (all 48 document questions pass, none of the general ones); on
# dev-07..12 and general 101-200: 97.9 % of document questions pass, no general question does.
THRESHOLD = 0.26


_WORD = re.compile(r"(?u)\b\w\w+\b")  # scikit-learn's default token pattern


def analyze(text: str) -> list[str]:
    """The words of `text` as scikit-learn's TfidfVectorizer(stop_words="english") analyses them: lower case,
    two or more word characters, English stop words dropped (without importing scikit-learn)."""
    return [w for w in _WORD.findall(text.lower()) if w not in ENGLISH_STOP_WORDS]


@lru_cache(maxsize=65536)
def rarity(term: str) -> float:
    """A word's weight: COMMONEST − its Zipf frequency in English (8 for an invented name)."""
    from wordfreq import zipf_frequency

    return max(0.0, COMMONEST - zipf_frequency(term, "en"))


def _vector(terms: list[str], index: dict[str, int]) -> dict[int, float]:
    """Sublinear tf × rarity over the terms in `index`, L2-normalised over all of `terms`."""
    counts = Counter(terms)
    weights = {t: (1 + math.log(c)) * rarity(t) for t, c in counts.items()}
    norm = math.sqrt(sum(w * w for w in weights.values())) or 1.0
    return {index[t]: w / norm for t, w in weights.items() if t in index and w > 0}


@dataclass
class DocumentKeys:
    """One document's vocabulary and sentence vectors (sparse: term index → weight)."""

    vocabulary: list[str]
    sentences: list[dict[int, float]] = field(default_factory=list)

    @classmethod
    def from_text(cls, text: str) -> "DocumentKeys":
        """Keys of `text`'s sentences; a markdown heading's words join every sentence under it, not a key of its own."""
        sentences, headings = [], {}
        for sentence in split_sentences(text) or [text]:
            level = len(sentence) - len(sentence.lstrip("#"))
            if level and sentence[level : level + 1].isspace():
                headings = {k: v for k, v in headings.items() if k < level} | {level: analyze(sentence)}
                continue
            sentences.append(analyze(sentence) + [t for terms in headings.values() for t in terms])
        keys = cls(sorted({t for terms in sentences for t in terms}))
        keys.sentences = [_vector(terms, keys._index) for terms in sentences if terms]
        return keys

    @cached_property
    def _index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.vocabulary)}

    def score(self, terms: list[str]) -> float:
        """Best cosine similarity between the analysed question terms and one sentence."""
        query = _vector(terms, self._index)
        return max((sum(w * row.get(i, 0.0) for i, w in query.items()) for row in self.sentences), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {"weighting": "zipf", "vocabulary": self.vocabulary, "sentences": [[[i, w] for i, w in row.items()] for row in self.sentences]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DocumentKeys":
        vocabulary = data["vocabulary"]
        rows = [{int(i): float(w) for i, w in row} for row in data["sentences"]]
        if data.get("weighting") != "zipf":  # keys saved before word rarity: re-weight the same words
            index = {t: i for i, t in enumerate(vocabulary)}
            rows = [_vector([vocabulary[i] for i in row], index) for row in rows]
        return cls(vocabulary, rows)


def scores(keys: list[DocumentKeys], question: str) -> list[float]:
    terms = analyze(question)
    return [k.score(terms) for k in keys]


def best_matches(keys: list[DocumentKeys], question: str, threshold: float) -> list[int]:
    """Indices of the documents whose score reaches `threshold`, best first (a threshold of 0: all of them)."""
    ranked = sorted(enumerate(scores(keys, question)), key=lambda p: -p[1])
    return [i for i, score in ranked if threshold <= 0 or score >= threshold]


def matches_any(keys: list[DocumentKeys], question: str, threshold: float) -> bool:
    """Whether some document's score reaches `threshold` (a threshold of 0 matches everything)."""
    return threshold <= 0 or max(scores(keys, question), default=0.0) >= threshold


# ---- the routing component the routed strategies share ------------------------------------------------


def threshold_option(help: str) -> Any:
    """A Config's route_threshold field: the router's calibrated THRESHOLD, in [0, 1]."""
    return option(THRESHOLD, help, min=0, max=1)


def top_option(default: int, minimum: int, help: str) -> Any:
    """A Config's route_top field: how many best-matching units act at once, at least `minimum`."""
    return option(default, help, min=minimum)


def check_keys(value: Any, what: str = "keys") -> None:
    """Raise ValueError unless `value` is a list of DocumentKeys.to_json(): {weighting, vocabulary: [term],
    sentences: [[[term index, weight]]]}."""
    need(isinstance(value, list), f"{what} must be a list")
    for i, keys in enumerate(value):
        need(isinstance(keys, dict) and isinstance(keys.get("vocabulary"), list) and isinstance(keys.get("sentences"), list), f"{what}[{i}] needs vocabulary and sentences lists")
        vocabulary, sentences = keys["vocabulary"], keys["sentences"]
        need(all(isinstance(t, str) for t in vocabulary), f"{what}[{i}].vocabulary must hold strings")
        need(isinstance(keys.get("weighting", ""), str), f"{what}[{i}].weighting must be a string")
        for row in sentences:
            need(isinstance(row, list), f"{what}[{i}].sentences must hold lists of [term, weight] pairs")
            for pair in row:
                ok = isinstance(pair, list) and len(pair) == 2 and is_int(pair[0]) and 0 <= pair[0] < len(vocabulary)
                need(ok and is_number(pair[1]), f"{what}[{i}].sentences holds {str(pair)[:40]}, not a [term index, weight] pair")


class Router:
    """A strategy's routing keys, one per routed unit (a document, or a part of one) in learn order, and the
    questions they match under the Config's route_threshold.

    Named routers (jitrl-mvp: one unit per document name) save their keys as an object {name: keys}, the
    others as a list, as sessions have always held them (check_saved checks both).
    """

    def __init__(self, config: Any, named: bool = False):
        self.config = config
        self.keys: list[DocumentKeys] = []
        self.names: list[str] | None = [] if named else None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def threshold(self) -> float:
        return self.config.route_threshold

    def add(self, text: str) -> None:
        self.keys.append(DocumentKeys.from_text(text))

    def remove(self, units: range | int) -> None:
        """Forget units (an index or a range of them), as Strategy.forget does."""
        units = range(units, units + 1) if isinstance(units, int) else units
        del self.keys[units.start : units.stop]

    def put(self, name: str, keys: DocumentKeys) -> None:
        """A named unit's keys (replacing a namesake's)."""
        self.pop(name)
        self.names.append(name)
        self.keys.append(keys)

    def pop(self, name: str) -> None:
        if name in self.names:
            i = self.names.index(name)
            del self.names[i], self.keys[i]

    def scores(self, question: str) -> list[float]:
        return scores(self.keys, question)

    def ranked(self, question: str) -> list[int]:
        """Units whose score reaches the threshold, best first (a threshold of 0: all of them)."""
        return best_matches(self.keys, question, self.threshold)

    def matches(self, question: str) -> bool:
        """Whether some unit's score reaches the threshold (a threshold of 0 matches everything)."""
        return matches_any(self.keys, question, self.threshold)

    def matching_names(self, question: str) -> set[str]:
        """Named units whose score reaches the threshold."""
        return {n for n, score in zip(self.names, self.scores(question)) if score >= self.threshold}

    def to_json(self) -> list[dict[str, Any]] | dict[str, dict[str, Any]]:
        if self.names is not None:
            return {n: k.to_json() for n, k in zip(self.names, self.keys)}
        return [k.to_json() for k in self.keys]

    def check_saved(self, state: dict[str, Any]) -> None:
        """Raise ValueError unless state["keys"] (absent: none) is what to_json() writes (before load)."""
        saved = state.get("keys", [] if self.names is None else {})
        if self.names is not None:
            need(isinstance(saved, dict), "keys must be an object (document name: its routing keys)")
            saved = list(saved.values())
        check_keys(saved)

    def load(self, saved: list | dict) -> None:
        """Keys as to_json() wrote them (check_saved has checked their layout)."""
        if self.names is not None:
            self.names, self.keys = list(saved), [DocumentKeys.from_json(k) for k in saved.values()]
        else:
            self.keys = [DocumentKeys.from_json(k) for k in saved]


class Routed:
    """Strategy mixin: the units a question matches act inside routed(), the others are off.

    A routed strategy keeps a Router in self.router, says which units a question wakes (active_documents:
    indices, or None for all of them with routing off) and how only those act (route_to)."""

    router: Router

    def active_documents(self, question: str) -> list[int] | None:
        raise NotImplementedError

    def route_to(self, active: list[int] | None) -> AbstractContextManager[None]:
        raise NotImplementedError

    def check_extra_state(self, state: dict[str, Any]) -> None:
        """Strategy.check_extra_state: the saved routing keys (a strategy with more JSON state extends this)."""
        self.router.check_saved(state)

    @contextmanager
    def routed(self, question: str) -> Iterator[None]:
        with self.route_to(self.active_documents(question)):
            yield

    def answer_group(self, question: str) -> tuple | None:
        """Questions routed to the same units (route_to(active) sets the same deltas), nothing in the prompt or logits."""
        if self.prompt_context(question) or self.logits_processors(question):  # type: ignore[attr-defined]
            return None
        active = self.active_documents(question)
        return ("routed", None if active is None else tuple(active), self.beams(question))  # type: ignore[attr-defined]

    def answers_plainly(self, question: str) -> bool:
        """Routed to no unit (route_to([]) is one state: every unit off), with nothing in the prompt or logits."""
        return self.active_documents(question) == [] and not self.prompt_context(question) and not self.logits_processors(question) and self.beams(question) == 1  # type: ignore[attr-defined]
