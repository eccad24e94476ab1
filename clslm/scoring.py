"""Answer scoring, SQuAD-style: normalise both sides, then "contains an accepted answer" and token F1.

Normalisation: lower case; digit-group commas dropped ("9,650" → "9650"); punctuation → spaces;
the articles a/an/the removed; runs of number words → digits ("twenty-seven" → "27",
"one hundred and twelve" → "112"), so "27" and "twenty-seven" score the same.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter

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
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.lower())
    text = "".join(" " if _is_punctuation(c) else c for c in text)
    return words_to_digits([w for w in text.split() if w not in ARTICLES])


def _is_punctuation(c: str) -> bool:
    return c in string.punctuation or unicodedata.category(c).startswith("P")


def words_to_digits(words: list[str]) -> list[str]:
    """Replace each run of number words by its value in digits; other words pass through."""
    out, i = [], 0
    while i < len(words):
        value, end = _read_number(words, i)
        if end > i:
            out.append(str(value))
            i = end
        else:
            out.append(words[i])
            i += 1
    return out


def _kind(word: str) -> str | None:
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
        word, kind = words[i], _kind(words[i])
        if word == "and" and last in ("hundred", "scale") and i + 1 < len(words) and _kind(words[i + 1]) in ("unit", "teen", "tens"):
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


def _f1(predicted: list[str], truth: list[str]) -> float:
    if not predicted or not truth:
        return float(predicted == truth)
    common = sum((Counter(predicted) & Counter(truth)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(truth)
    return 2 * precision * recall / (precision + recall)
