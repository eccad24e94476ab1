"""ace's grounding: a bullet is kept only if what it states is in the chunk it came from, and the extractive
bullets (the chunk's own sentences) the Curator falls back to when the backend's delta is unusable.

The check is lexical, not another LLM call: every number and name of the bullet must occur in the chunk,
and at least `share` of its other content words (stop words aside; "finished" matches "finish"). A bullet
with nothing to check ("It is so.") is not grounded.
"""

from __future__ import annotations

import re

from ...documents import split_sentences
from ..guided import shorten
from ..stop_words import ENGLISH_STOP_WORDS
from ..tfidf import rank
from .playbook import clean
from .prompts import as_data

_WORD = re.compile(r"\w+")
_SUFFIXES = ("ing", "ed", "es", "s", "ly")


def stem(word: str) -> str:
    """A crude stem: one common English suffix off, keeping at least three letters."""
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def terms(text: str) -> tuple[set[str], set[str], set[str]]:
    """(numbers, names, other content words) of `text`, lowercased; names are capitalised non-stop words."""
    numbers, names, words = set(), set(), set()
    for token in _WORD.findall(text):
        low = token.lower()
        if any(c.isdigit() for c in token):
            numbers.add(low)
        elif len(low) < 2 or low in ENGLISH_STOP_WORDS:
            continue
        elif token[0].isupper():
            names.add(low)
        else:
            words.add(low)
    return numbers, names, words


def grounded(text: str, chunk: str, share: float) -> bool:
    """True when the chunk supports `text`: all its numbers and names occur in it, and `share` of its other
    content words (by stem)."""
    numbers, names, words = terms(text)
    if not (numbers or names or words):
        return False
    found = {t.lower() for t in _WORD.findall(chunk)}
    if not (numbers <= found and names <= found):
        return False
    stems = {stem(w) for w in found}
    return sum(stem(w) in stems for w in words) >= share * len(words)


def pieces(sentence: str, max_chars: int) -> list[str]:
    """A sentence as bullets of at most max_chars: whole when it fits, else cut at clause ends (; and ,)."""
    sentence = clean(sentence)
    if len(sentence) <= max_chars:
        return [sentence]
    out, current = [], ""
    for part in re.split(r"(?<=[;,])\s+", sentence):
        if current and len(current) + 1 + len(part) > max_chars:
            out.append(current)
            current = ""
        current = f"{current} {part}".strip()
    out.append(current)
    return [shorten(p, max_chars) for p in out if len(_WORD.findall(p)) >= 2]


def pointed(sentences: list[str], pointers: list[str]) -> list[int]:
    """The sentences the pointers (lessons, questions) point at: each one's best TF-IDF match, in order."""
    chosen: list[int] = []
    for pointer in pointers:
        best = rank(sentences, pointer)[:1]
        chosen += [i for i in best if i not in chosen]
    return chosen


def questions_of(drafts: str) -> list[str]:
    """The Generator's questions: the text after each 'Q:' up to its 'A:'."""
    return [clean(m) for m in re.findall(r"Q:\s*(.*?)(?:\bA:|$)", drafts, re.MULTILINE) if clean(m)]


def extract(chunk: str, pointers: list[str], max_chars: int, everything: bool) -> list[str]:
    """Extractive bullets from the chunk: the sentences the pointers point at (all sentences, in order, when
    none does); with `everything`, then the rest of the chunk's sentences too."""
    sentences = split_sentences(chunk)
    order = pointed(sentences, pointers)
    if everything or not order:
        order += [i for i in range(len(sentences)) if i not in order]
    return [p for i in order for p in pieces(as_data(sentences[i]), max_chars)]
