"""The TF-IDF ranker jitrl-mvp (document chunks) and ace (playbook bullets) retrieve with.

scikit-learn's TfidfVectorizer with English stop words and sublinear tf, fitted on the texts searched;
a query's score for a text is the cosine similarity of their TF-IDF vectors (rows are L2-normalised).
"""

from __future__ import annotations

from typing import Any


class TfidfIndex:
    """TF-IDF vectors of `texts`, fitted once; `scores(query)` is each text's similarity to the query."""

    def __init__(self, texts: list[str]):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer: Any = TfidfVectorizer(stop_words="english", sublinear_tf=True)
        try:
            self.matrix = self.vectorizer.fit_transform(texts)
        except ValueError:  # no texts, or nothing but stop words: nothing matches
            self.vectorizer = self.matrix = None

    def scores(self, query: str) -> list[float] | None:
        """Each text's similarity to `query`; None when the index holds no words."""
        if self.vectorizer is None:
            return None
        return (self.matrix @ self.vectorizer.transform([query]).T).toarray().ravel()


def rank(texts: list[str], query: str) -> list[int]:
    """Indices of `texts` sharing a content word with `query`, most TF-IDF-similar first (ties: in order)."""
    if not texts:
        return []
    scores = TfidfIndex(texts).scores(query)
    if scores is None:
        return []
    return [i for i in sorted(range(len(texts)), key=lambda i: (-scores[i], i)) if scores[i] > 0]
