"""Questions a sentence answers, made by masking its answer spans (a classic question-generation baseline).

A question about a fact repeats the words around the fact and replaces the fact itself with a wh-word:
"The tower was completed in 1793." answers "The tower was completed in what year?". Teaching the sentence
as the reply to such questions ties the words that real questions share with it to the sentence, and
never puts the answer in the prompt (a question does not contain its answer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBER_WORDS = (
    r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|"
    r"seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred)"
)
_NUMBER = rf"(?:\d[\d,.]*|{_NUMBER_WORDS}(?:[- ]{_NUMBER_WORDS})*)"
_YEAR = re.compile(r"\b(?:(in|of|by|since|until|from|after|before) )?((?:1[0-9]|20)\d\d)\b")
_QUANTITY = re.compile(rf"\b({_NUMBER}) ((?:[a-z]+ )?[a-z]+?s)\b", re.IGNORECASE)
_NAME = re.compile(r"\b(?:(the|at|in|near|from|to|on|by) )?((?:[A-Z][\w'’-]+)(?: (?:of |de |van |von |the )?[A-Z][\w'’-]+)*)")
_PLACE_PREPOSITIONS = {"at", "in", "near", "from", "to", "on"}
_TIMES = {"January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"}  # fmt: skip
NOT_NAMES = {"The", "A", "An", "It", "In", "On", "At", "He", "She", "They", "This", "That", "Its", "His", "Her", "Their", "After", "By", "For", "When", "With", "From", "As", "Each", "Every", "Most", "Some", "There", "These", "Those", "But", "And", "Or", "If", "To", "Of", "During", "Since", "Until", "Before", "While"}  # fmt: skip


@dataclass(frozen=True)
class Span:
    start: int  # character offsets of the text the wh-phrase replaces
    end: int
    wh: str


def answer_spans(sentence: str, topic: str = "") -> list[Span]:
    """Years, quantities and names in `sentence`, each with the wh-phrase that asks for it.

    The document's own subject (`topic`) is never an answer: every question is about it.
    """
    spans = []
    for m in _YEAR.finditer(sentence):
        prep = m.group(1)
        spans.append(Span(m.start(), m.end(), f"{prep} what year" if prep else "what year"))
    for m in _QUANTITY.finditer(sentence):
        if not _overlaps(spans, m.start(), m.end()):
            spans.append(Span(m.start(), m.end(), f"how many {m.group(2)}"))
    for m in _NAME.finditer(sentence):
        name = m.group(2)
        if _not_an_answer(name, topic) or (m.start(2) == 0 and " " not in name) or _overlaps(spans, m.start(), m.end()):
            continue
        prep = m.group(1)
        if name in _TIMES:
            spans.append(Span(m.start(), m.end(), "when"))
        elif prep in _PLACE_PREPOSITIONS:
            spans.append(Span(m.start(), m.end(), "where"))
        elif prep == "the":
            spans.append(Span(m.start(), m.end(), "what"))
        else:
            spans.append(Span(m.start(2), m.end(), "who" if " " in name else "what"))
    return sorted(spans, key=lambda s: s.start)


def _not_an_answer(name: str, topic: str) -> bool:
    bare = name[4:] if name.startswith("The ") else name
    return name in NOT_NAMES or (bool(topic) and bare.lower() in topic.lower())


def _overlaps(spans: list[Span], start: int, end: int) -> bool:
    return any(start < s.end and s.start < end for s in spans)


def masked_question(sentence: str, span: Span, window: int = 12) -> str:
    """The clause around `span` with the span replaced by its wh-phrase: 'The tower was completed in what year?'"""
    before = sentence[: span.start].split()[-window:]
    after = re.split(r"[;:]", sentence[span.end :])[0].split()[:window]
    words = [*before, span.wh, *after]
    text = " ".join(words).replace(" ,", ",").strip(" ,.;:!?—-")
    return text[0].upper() + text[1:] + "?"


def questions_for(sentence: str, topic: str = "") -> list[str]:
    """One masked question per answer span of `sentence` (none when it names no year, quantity or name)."""
    return [masked_question(sentence, span) for span in answer_spans(sentence, topic)]
