"""Answer scoring, SQuAD-style: normalise both sides, then "contains an accepted answer" and token F1.

Normalisation: lower case; digit-group commas dropped ("9,650" → "9650"); punctuation → spaces;
the articles a/an/the removed; runs of number words → digits ("twenty-seven" → "27",
"one hundred and twelve" → "112"), so "27" and "twenty-seven" score the same.

Strict (strict_answer), reported next to answer-contains so a reader sees how much of an accuracy is luck:
the reply must contain an accepted answer AND must not give another answer of the same kind first, nor take
it back. The accepted span is the earliest place in the normalised reply where an accepted answer occurs.
Its kind: a year (1000–2100) when the accepted answer's numbers are years, a number when it holds another
number, a name when it is written with a capital, else other. The reply is strict-correct when
  1. no candidate of that kind comes before the accepted span — for a year another year, for a number another
     non-year number, for a name another capitalised word that does not start a sentence (nor "I"); words of
     the question or of any accepted answer are no candidates. "The answer is 18 days … nine days" fails;
  2. nothing after the span takes it back: a CONTRADICTIONS phrase anywhere after it ("but it was actually",
     "however", "in fact"), or "or" right after it ("1991 or 1992").
Candidates after the span do not count: "rowed since 1911, except in the flood year of 1953" is right.
Strict is a lower bound: "Stroke Cai Abernathy said the crew took the lead at Heron Point" fails for "Heron
Point", since a capitalised name comes first.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass, replace

ARTICLES = {"a", "an", "the"}
UNITS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine".split())}
TEENS = {w: i + 10 for i, w in enumerate("ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())}
TENS = {w: (i + 2) * 10 for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9}
VALUES = UNITS | TEENS | TENS

# Which kind of number word may follow which: keeps "eleven to four" two numbers, "twenty seven" one.
FOLLOWS = {
    "unit": {None, "tens", "hundred", "scale", "and"},
    "teen": {None, "hundred", "scale", "and"},
    "tens": {None, "hundred", "scale", "and"},
    "hundred": {None, "unit", "teen"},
    "scale": {"unit", "teen", "tens", "hundred"},
}


def normalize(text: str) -> str:
    return " ".join(normalize_tokens(text))


def normalize_tokens(text: str) -> list[str]:
    return [t.word for t in _tokens(text)]


@dataclass(frozen=True)
class _Token:
    word: str  # normalised: lower case, a number word run as digits
    capital: bool  # written with a capital first letter
    starts: bool  # the first written word of a sentence


def _tokens(text: str) -> list[_Token]:
    """The normalised words (see the module doc), each with how it was written."""
    tokens, starts = [], True
    for raw in text.split():
        pieces = "".join(" " if _is_punctuation(c) else c for c in re.sub(r"(?<=\d),(?=\d{3}\b)", "", raw)).split()
        tokens += [_Token(p.lower(), p[0].isupper(), starts and k == 0) for k, p in enumerate(pieces) if p.lower() not in ARTICLES]
        starts = raw.rstrip("\"')]\u201d\u2019").endswith((".", "!", "?", ":"))
    # Each run of number words becomes one token, its digits (written as its first word was).
    out, i, words = [], 0, [t.word for t in tokens]
    while i < len(words):
        value, end = _read_number(words, i)
        out.append(replace(tokens[i], word=str(value)) if end > i else tokens[i])
        i = max(end, i + 1)
    return out


def _is_punctuation(c: str) -> bool:
    return c in string.punctuation or unicodedata.category(c).startswith("P")


def _number_kind(word: str) -> str | None:
    if word in UNITS:
        return "unit"
    if word in TEENS:
        return "teen"
    if word in TENS:
        return "tens"
    if word == "hundred":
        return "hundred"
    return "scale" if word in SCALES else None


def _read_number(words: list[str], start: int) -> tuple[int, int]:
    """(value, end) of the number spelled from words[start]; end == start when there is none."""
    total = current = 0
    last, end, i = None, start, start
    while i < len(words):
        word, kind = words[i], _number_kind(words[i])
        if word == "and" and last in ("hundred", "scale") and i + 1 < len(words) and _number_kind(words[i + 1]) in ("unit", "teen", "tens"):
            last, i = "and", i + 1
            continue
        if kind is None or last not in FOLLOWS[kind] or (word == "zero" and last is not None):
            break
        if kind == "hundred":
            current = (current or 1) * 100
        elif kind == "scale":
            total, current = total + current * SCALES[word], 0
        else:
            current += VALUES[word]
        last, i, end = kind, i + 1, i + 1
        if word == "zero":
            break
    return total + current, end


def contains_answer(prediction: str, answers: list[str]) -> bool:
    """True when the normalised prediction contains a normalised accepted answer as whole words."""
    text = f" {normalize(prediction)} "
    return any(f" {a} " in text for a in map(normalize, answers) if a)


def token_f1(prediction: str, answers: list[str]) -> float:
    """Best SQuAD token F1 of the prediction against any accepted answer."""
    return max((_f1(normalize_tokens(prediction), normalize_tokens(a)) for a in answers), default=0.0)


def accuracy(predictions: list[str], answers: list[tuple[str, ...]]) -> float:
    """Share of predictions that contain an accepted answer (answer-contains); 0.0 for none."""
    return _mean([contains_answer(p, list(a)) for p, a in zip(predictions, answers, strict=True)])


def strict_accuracy(predictions: list[str], answers: list[tuple[str, ...]], questions: list[str]) -> float:
    """Share of predictions that strict_answer accepts; 0.0 for none."""
    return _mean([strict_answer(p, list(a), q) for p, a, q in zip(predictions, answers, questions, strict=True)])


def mean_f1(predictions: list[str], answers: list[tuple[str, ...]]) -> float:
    return _mean([token_f1(p, list(a)) for p, a in zip(predictions, answers, strict=True)])


def _mean(values: list) -> float:
    return sum(values) / len(values) if values else 0.0


def _f1(predicted: list[str], truth: list[str]) -> float:
    if not predicted or not truth:
        return float(predicted == truth)
    common = sum((Counter(predicted) & Counter(truth)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(truth)
    return 2 * precision * recall / (precision + recall)


# After the accepted answer, these take it back or hedge it (normalised: lower case, no articles).
CONTRADICTIONS = (
    "actually", "in fact", "instead", "however", "but it", "but they", "but this", "but that",
    "but was", "but is", "but has", "but had", "but does", "but did", "but not",
)  # fmt: skip


def strict_answer(prediction: str, answers: list[str], question: str = "") -> bool:
    """Answer-contains, and no other candidate of the answer's kind before it nor a take-back after it (module doc)."""
    if not contains_answer(prediction, answers):
        return False
    tokens = _tokens(prediction)
    words = [t.word for t in tokens]
    span = _accepted_span(words, answers)
    assert span is not None  # contains_answer found one
    start, end, answer = span
    after = f" {' '.join(words[end:])} "
    if words[end : end + 1] == ["or"] or any(f" {c} " in after for c in CONTRADICTIONS):
        return False
    known = {t.word for t in _tokens(question)} | {w for a in answers for w in normalize_tokens(a)}
    kind = _kind_of(answer)
    return not any(_candidate(t, kind) and t.word not in known for t in tokens[:start])


def _accepted_span(words: list[str], answers: list[str]) -> tuple[int, int, str] | None:
    """(start, end, accepted answer) of the earliest accepted answer in the words, the longest one there."""
    found = []
    for answer in answers:
        target = normalize_tokens(answer)
        n = len(target)
        i = next((i for i in range(len(words) - n + 1) if n and words[i : i + n] == target), None)
        if i is not None:
            found.append((i, -n, answer))
    if not found:
        return None
    start, minus_length, answer = min(found)
    return start, start - minus_length, answer


def _kind_of(answer: str) -> str:
    tokens = _tokens(answer)
    numbers = [t.word for t in tokens if t.word.isdecimal()]
    if numbers:
        return "year" if all(_is_year(w) for w in numbers) else "number"
    return "name" if any(t.capital for t in tokens) else "other"


def _candidate(token: _Token, kind: str) -> bool:
    if kind in ("year", "number"):
        return token.word.isdecimal() and _is_year(token.word) == (kind == "year")
    if kind == "name":
        return token.capital and not token.starts and not token.word.isdecimal() and token.word != "i"
    return False


def _is_year(word: str) -> bool:
    return len(word) == 4 and 1000 <= int(word) <= 2100
