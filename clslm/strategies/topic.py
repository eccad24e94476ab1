"""What a document (or a part of one) is about: the name its training questions ask about and its
sentence-initial pronouns stand for.

A document usually opens with its subject ("Keldrunite is a rare phosphate mineral…", "bramblesync is a
command-line tool…", "Elowen Strathcarrow (1852–1926) was a botanist…"); otherwise it names it early and
again later. So the subject is the name or rare word the first sentence starts with, else the first one
of the opening sentences that the text mentions again. Counting capitalised phrases alone picks whatever name recurs most — a unit ("KiB"), a
mountain range the botanist surveyed — and then "She was born…" is taught as "Brenvald Range was born…".
"""

from __future__ import annotations

import re
from collections import Counter

from ..documents import split_sentences
from .router import rarity
from .questions import NOT_NAMES

OPENING_SENTENCES = 3  # where a document names its subject
RARE_NAME = 4.5  # a name needs a word at least this unusual (router.rarity: 8 − Zipf; everyday words 0–3)
RARE_WORD = 6.5  # a lower-case word this unusual is a name too ('bramblesync', 'keldrunite'; 'pigment' is 4.7)
_HEADING = re.compile(r"^\s*#{1,6}\s.*$", re.M)
_NAME = re.compile(r"\b[A-Z][\w'’-]+(?:\s+(?:of|the|de|van|von|and|on|la|le)?\s*[A-Z][\w'’-]+)*")
_RARE_WORD = re.compile(r"\b[a-z][a-z0-9-]{3,}\b")
_WORD = re.compile(r"[\w'’-]+")


def subject(text: str) -> str:
    """The document's subject ('the document' when it names none)."""
    body = _HEADING.sub("", text)
    sentences = split_sentences(body) or [body]
    opening = [(start, name) for start, name in _candidates(sentences[0]) if start <= len("The ")]
    if opening:
        return _as_subject(opening[0][1], body)
    for sentence in sentences[:OPENING_SENTENCES]:
        for _, candidate in _candidates(sentence):
            if _mentions(candidate, body) >= 2:
                return _as_subject(candidate, body)
    return _most_frequent_name(body)


def _candidates(sentence: str) -> list[tuple[int, str]]:
    """(offset, name) for the names and rare lower-case words of a sentence, in the order they appear."""
    names = [(m.start(), m.group()) for m in _NAME.finditer(sentence)]
    names = [(start, _strip_article(name)) for start, name in names if _rare_words(name, RARE_NAME)]
    words = [(m.start(), m.group()) for m in _RARE_WORD.finditer(sentence) if _rare_words(m.group(), RARE_WORD)]
    return [(start, text) for start, text in sorted(names + words) if text not in NOT_NAMES]


def _rare_words(phrase: str, threshold: float = RARE_NAME) -> list[str]:
    return [w for w in _WORD.findall(phrase.lower()) if rarity(w) >= threshold]


def _mentions(phrase: str, text: str) -> int:
    """How often the text names it: its most repeated rare word ('Strathcarrow' for the full name)."""
    return max(len(re.findall(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text, re.IGNORECASE)) for w in _rare_words(phrase))


def _strip_article(name: str) -> str:
    return name[4:] if name.startswith("The ") else name


def _as_subject(name: str, text: str) -> str:
    """The name as the text says it: 'the Kessenbrock Light' when the text mostly puts 'the' before it."""
    if name.isupper() and len(name) > 3:  # 'PRELLWICK —' datelines
        name = name.title()
    said = re.findall(rf"(\bthe\s+)?{re.escape(name)}\b", text, re.IGNORECASE)
    with_article = sum(1 for article in said if article)
    return f"the {name}" if " " in name and 2 * with_article > len(said) else name


def _most_frequent_name(text: str) -> str:
    """The fallback: the most frequent proper name, multi-word ones first (the document's title, often)."""
    names = [n for n in _NAME.findall(text) if n not in NOT_NAMES]
    multi = [n for n in names if " " in n]
    pool = Counter(multi).most_common(1) or Counter(names).most_common(1)
    name = pool[0][0] if pool else "the document"
    return "the " + name[4:] if name.startswith("The ") else name
