"""TF-IDF routing keys: does a question match what a learned document says?

Per document we keep its sentences as TF-IDF vectors (bag-of-words keys, not the text). A question's
score for a document is the best cosine similarity between the question and one of its sentences:
document questions and general questions separate well on it, while hidden-state similarity does not.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..documents import split_sentences


def _analyzer():
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(stop_words="english", sublinear_tf=True).build_analyzer()


@dataclass
class DocumentKeys:
    """One document's vocabulary, idf and sentence vectors (sparse: term index → weight)."""

    vocabulary: list[str]
    idf: list[float]
    sentences: list[dict[int, float]] = field(default_factory=list)

    @classmethod
    def from_text(cls, text: str) -> "DocumentKeys":
        from sklearn.feature_extraction.text import TfidfVectorizer

        from .gating import general_corpus

        sentences = split_sentences(text) or [text]
        vectorizer = TfidfVectorizer(stop_words="english", sublinear_tf=True)
        # Everyday text as background: words it uses often get a low idf and route nothing.
        try:
            matrix = vectorizer.fit_transform(sentences + general_corpus()).tocsr()[: len(sentences)]
        except ValueError:  # only stop words: nothing to route on
            return cls([], [], [])
        rows = [dict(zip(matrix[i].indices.tolist(), matrix[i].data.tolist())) for i in range(matrix.shape[0])]
        return cls(vectorizer.get_feature_names_out().tolist(), vectorizer.idf_.tolist(), rows)

    def score(self, terms: list[str]) -> float:
        """Best cosine similarity between the analysed question terms and one sentence."""
        index = {t: i for i, t in enumerate(self.vocabulary)}
        counts = Counter(terms)
        query = {index[t]: (1 + math.log(c)) * self.idf[index[t]] for t, c in counts.items() if t in index}
        if not query:
            return 0.0
        # Words the document never uses still make the question long: they count, as the rarest words.
        unseen = max(self.idf, default=1.0)
        norm = math.sqrt(sum(v * v for v in query.values()) + sum(((1 + math.log(c)) * unseen) ** 2 for t, c in counts.items() if t not in index))
        return max((sum(w * row.get(i, 0.0) for i, w in query.items()) / norm for row in self.sentences), default=0.0)

    def to_json(self) -> dict[str, Any]:
        return {"vocabulary": self.vocabulary, "idf": self.idf, "sentences": [[[i, w] for i, w in row.items()] for row in self.sentences]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "DocumentKeys":
        return cls(data["vocabulary"], data["idf"], [{int(i): float(w) for i, w in row} for row in data["sentences"]])


def scores(keys: list[DocumentKeys], question: str) -> list[float]:
    terms = _analyzer()(question)
    return [k.score(terms) for k in keys]
