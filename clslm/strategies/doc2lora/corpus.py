"""`clslm doc2lora train --data PATH`: one's own documents, as JSONL with questions or as plain text.

- A `.jsonl` file is the bench facts format (id, title, document, qa): its questions are the probes.
- A plain text file (`.txt`, `.md`, or any other name that is not `.jsonl`) is cut at blank lines into
  documents of at most `WORDS` words (a paragraph longer than that is one document). Such a document has no
  questions, so its probes are made from its own sentences, as simulated mode makes them: the first 40 % of
  a sentence, asked for the rest (`simulated.sentence_probes`); the teacher reads the document above them.
- A folder: every `.jsonl`, `.txt` and `.md` file under it (recursively, in name order).

Documents are named `file#n`; an empty result is an error.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...benchdata import QA, FactsDoc, load_facts
from ...errors import InputError
from .simulated import sentence_probes

WORDS = 220  # longest plain-text document: about two of the bundled hypernetwork's 128-token chunks
SUFFIXES = (".jsonl", ".txt", ".md")
PROBES = 8  # questions made per plain-text document (the trainer asks `--qa-per-doc` of them per step)


def load_corpus(path: str | Path) -> list[FactsDoc]:
    """The documents at `path`: a JSONL facts file, a plain text file, or a folder of them."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise InputError(f"{path}: no .jsonl, .txt or .md files in this folder")
        docs = [doc for file in files for doc in _load_file(file, str(file.relative_to(path)))]
    elif path.is_file():
        docs = _load_file(path, path.name)
    else:
        raise InputError(f"{path}: no such file or folder")
    if not docs:
        raise InputError(f"{path}: no documents with sentences to ask about")
    return docs


def _load_file(path: Path, name: str) -> list[FactsDoc]:
    if path.suffix.lower() == ".jsonl":
        return load_facts(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read as UTF-8 text ({e})") from None
    return [doc for i, piece in enumerate(pieces(text)) if (doc := text_doc(f"{name}#{i}", piece)) is not None]


def pieces(text: str, words: int = WORDS) -> list[str]:
    """Consecutive paragraphs of `text` joined into pieces of at most `words` words."""
    return paragraph_pieces([p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()], words)


def paragraph_pieces(paragraphs: list[str], words: int = WORDS) -> list[str]:
    """Consecutive paragraphs joined into pieces of at most `words` words (a longer paragraph is a piece alone)."""
    out, current, count = [], [], 0
    for paragraph in paragraphs:
        n = len(paragraph.split())
        if current and count + n > words:
            out.append("\n\n".join(current))
            current, count = [], 0
        current.append(paragraph)
        count += n
    return out + (["\n\n".join(current)] if current else [])


def text_doc(name: str, text: str) -> FactsDoc | None:
    """A plain-text document with questions made from its sentences (None when it has none to ask)."""
    qa = tuple(QA(probe.student, (probe.reply,)) for probe in sentence_probes(text, PROBES))
    return FactsDoc(id=name, title=name, document=text, qa=qa) if qa else None
