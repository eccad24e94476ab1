"""Benchmark sets (JSONL): facts sets (documents with questions) and general-knowledge sets.

facts:   {"id", "title", "document", "qa": [{"question", "answers": [..]}]}   ("title" optional)
general: {"id", "question", "answers": [..]}
Copies of the development sets ship as package data: `clslm bench` runs with no arguments.
A line that does not fit is an InputError naming the file and line number.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from .errors import InputError

FACTS_DEV = "facts-dev.jsonl"
GENERAL_DEV = "general-dev.jsonl"


@dataclass(frozen=True)
class QA:
    question: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class FactsDoc:
    id: str
    title: str
    document: str
    qa: tuple[QA, ...]


@dataclass(frozen=True)
class GeneralQuestion:
    id: str
    question: str
    answers: tuple[str, ...]


def bundled(name: str) -> Path:
    """A data set shipped with clslm (clslm/data/NAME)."""
    return Path(str(files("clslm").joinpath("data", name)))


def load_facts(path: str | Path | None = None) -> list[FactsDoc]:
    """Documents with questions; the bundled dev set when path is None."""
    path = Path(path) if path is not None else bundled(FACTS_DEV)
    docs = [_facts_doc(record, where) for where, record in _records(path)]
    _check_unique(path, [d.id for d in docs])
    return docs


def load_general(path: str | Path | None = None) -> list[GeneralQuestion]:
    """General-knowledge questions; the bundled dev set when path is None."""
    path = Path(path) if path is not None else bundled(GENERAL_DEV)
    questions = [GeneralQuestion(_text(r, "id", w), _text(r, "question", w), _answers(r, w)) for w, r in _records(path)]
    _check_unique(path, [q.id for q in questions])
    return questions


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, JSON object) for each non-blank line; an empty file is an error."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read ({e})") from None
    count = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise InputError(f"{where}: expected a JSON object")
        count += 1
        yield where, record
    if count == 0:
        raise InputError(f"{path}: empty (expected one JSON object per line)")


def _facts_doc(record: dict[str, Any], where: str) -> FactsDoc:
    qa = record.get("qa")
    if not isinstance(qa, list) or not qa:
        raise InputError(f"{where}: missing field 'qa' (a non-empty list of {{question, answers}})")
    items = []
    for i, item in enumerate(qa, start=1):
        if not isinstance(item, dict):
            raise InputError(f"{where}: qa[{i}] is not an object")
        items.append(QA(_text(item, "question", f"{where}, qa[{i}]"), _answers(item, f"{where}, qa[{i}]")))
    doc_id = _text(record, "id", where)
    title = record.get("title") or doc_id
    return FactsDoc(doc_id, str(title), _text(record, "document", where), tuple(items))


def _text(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "id":
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: missing field {key!r} (a non-empty string)")
    return value


def _answers(record: dict[str, Any], where: str) -> tuple[str, ...]:
    answers = record.get("answers")
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise InputError(f"{where}: missing field 'answers' (a non-empty list of strings)")
    return tuple(answers)


def _check_unique(path: Path, ids: list[str]) -> None:
    seen = set()
    for i in ids:
        if i in seen:
            raise InputError(f"{path}: duplicate id {i!r}")
        seen.add(i)
