"""Documents: reading txt/md/pdf/jsonl/directories/stdin into text, and splitting text into pieces."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".text"}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | {".pdf", ".jsonl"}
DEFAULT_MAX_BYTES = 50_000_000


@dataclass(frozen=True)
class Document:
    """A named piece of text with its content hash."""

    name: str
    text: str
    encoding: str = "utf-8"  # how the bytes were decoded: utf-8, utf-16, cp1252; "pdf" for a PDF's text layer

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @classmethod
    def from_text(cls, text: str, name: str = "text") -> "Document":
        return cls(name=name, text=_require_text(text, name))


def read_documents(
    path: str | Path,
    *,
    text_field: str = "text",
    password: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[Document]:
    """Read PATH ('-' for stdin, a file, or a directory of supported files) into documents."""
    if str(path) == "-":
        data = sys.stdin.buffer.read(max_bytes + 1)
        _check_size(len(data), max_bytes, "stdin")
        return [_text_document("stdin", data)]
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
        if not files:
            raise InputError(f"{path}: directory holds no supported files ({', '.join(sorted(SUPPORTED_SUFFIXES))})")
        return [doc for f in files for doc in read_documents(f, text_field=text_field, password=password, max_bytes=max_bytes)]
    return load_bytes(str(path), _read_file(path, max_bytes), text_field=text_field, password=password)


def load_bytes(name: str, data: bytes, *, text_field: str = "text", password: str | None = None) -> list[Document]:
    """Documents from the bytes of a file called `name` (its suffix picks the loader): text, or InputError."""
    suffix = Path(name).suffix.lower()
    if suffix == ".pdf":
        return [_pdf_document(name, data, password)]
    if suffix == ".jsonl":
        return _jsonl_documents(name, data, text_field)
    return [_text_document(name, data)]


def _read_file(path: Path, max_bytes: int) -> bytes:
    """The file's bytes, refusing devices and pipes (endless or blocking) and reading at most max_bytes + 1."""
    if not path.is_file():
        raise InputError(f"{path}: not a regular file")
    _check_size(path.stat().st_size, max_bytes, str(path))  # before reading anything
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    _check_size(len(data), max_bytes, str(path))  # it may have grown since
    return data


def _check_size(size: int, max_bytes: int, name: str) -> None:
    if size > max_bytes:
        raise InputError(f"{name}: larger than --max-bytes {max_bytes}")


def _text_document(name: str, data: bytes) -> Document:
    text, encoding = decode_text(data, name)
    return Document(name=name, text=_require_text(text, name), encoding=encoding)


def decode_text(data: bytes, name: str) -> tuple[str, str]:
    """Decode UTF-8 / UTF-16 (with BOM) / cp1252 text; reject binary data."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            raise InputError(f"{name}: invalid UTF-16 text") from None
    if b"\x00" in data:
        raise InputError(f"{name}: binary file, not text")
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if _looks_binary(text):
            raise InputError(f"{name}: binary file, not text")
        return text, "utf-8" if encoding == "utf-8-sig" else encoding
    raise InputError(f"{name}: not valid UTF-8, UTF-16 or cp1252 text")


def _looks_binary(text: str) -> bool:
    sample = text[:4096]
    control = sum(1 for c in sample if ord(c) < 32 and c not in "\t\n\r\f")
    return bool(sample) and control / len(sample) > 0.05


def _require_text(text: str, name: str) -> str:
    if not text.strip():
        raise InputError(f"{name}: document is empty")
    return text


def _pdf_document(path: str, data: bytes, password: str | None) -> Document:
    import pymupdf

    pymupdf.TOOLS.mupdf_display_errors(False)  # MuPDF's own complaints would add lines to the one-line error
    pymupdf.TOOLS.mupdf_display_warnings(False)
    try:
        pdf = pymupdf.open(stream=data, filetype="pdf")
    except Exception as e:  # pymupdf raises several types for damaged files
        raise InputError(f"{path}: cannot read PDF ({str(e).strip() or type(e).__name__})") from None
    with pdf:
        if pdf.needs_pass:
            if password is None:
                raise InputError(f"{path}: PDF is encrypted; give --password")
            if not pdf.authenticate(password):
                raise InputError(f"{path}: wrong PDF password")
        try:
            text = "\n\n".join(_page_text(page) for page in pdf)
        except Exception as e:
            raise InputError(f"{path}: cannot read PDF text ({e})") from None
        repaired = pdf.is_repaired
    if not text.strip():
        if repaired:  # MuPDF rebuilt a damaged file (e.g. truncated) and found no text in what was left
            raise InputError(f"{path}: damaged PDF (truncated?); no text could be read")
        raise InputError(f"{path}: PDF has no text layer (scanned images?); run OCR first")
    return Document(name=path, text=text, encoding="pdf")


def _page_text(page) -> str:
    """A page's text blocks as paragraphs: a heading is its own block, so it does not run into the next sentence."""
    return "\n\n".join(block[4].strip() for block in page.get_text("blocks") if block[6] == 0 and block[4].strip())


def _jsonl_documents(path: str, data: bytes, text_field: str) -> list[Document]:
    docs = []
    text, encoding = decode_text(data, path)
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{number}: invalid JSON ({e.msg})") from None
        except RecursionError:
            raise InputError(f"{path}:{number}: JSON nested too deeply") from None
        value = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            raise InputError(f"{path}:{number}: no string field {text_field!r} (set --text-field)")
        name = f"{path}#{record.get('id', number)}"
        docs.append(Document(name=name, text=_require_text(value, name), encoding=encoding))
    if not docs:
        raise InputError(f"{path}: no documents")
    return docs


# A possible cut: end punctuation, closing quotes/brackets (kept with the sentence), then space before a
# capital, digit, opening quote or bracket. _ends_sentence() then looks at the word before it.
_SENTENCE_END = re.compile(r"(?:[.!?…][\"')\]”’]*)\s+(?=[A-Z0-9\"'(\[“‘])")
# Never end a sentence: titles before a name, and words that always continue ("vs. Saalberg").
NEVER_END = {"mr", "mrs", "ms", "dr", "prof", "st", "mt", "rev", "gen", "capt", "lt", "col", "sgt", "gov", "vs", "cf", "viz", "approx", "ca"}
# Do not end a sentence before a number ("No. 7", "Fig. 3", "Jan. 1997", "Dec. 4"); before a capital they may.
BEFORE_NUMBER = {"no", "nos", "fig", "figs", "vol", "p", "pp", "ch", "sec", "eq", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec"}
_LIST_NUMBER = re.compile(r"\d{1,3}\.")  # a numbered list item's number, alone at the start of a sentence
_DOTTED = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")  # A.M, e.g, i.e, U.S (the last dot is stripped before matching)


def split_sentences(text: str) -> list[str]:
    """Split prose into sentences: paragraphs (blank lines) first, then end punctuation before a capital or digit.

    A period does not end a sentence after an initial ("L. Peter Deutsch"), dotted initials or abbreviations
    ("A.M. Kuchling", "e.g.", "i.e."), a title or NEVER_END word ("Dr. Dobb's", "vs. Saalberg"), a BEFORE_NUMBER
    word followed by a number ("Jan. 1997", "No. 7", "Fig. 3"), or a lone ellipsis between words ("the ... Peter");
    decimals and versions ("3.5 km", "zlib 1.2.13") never had a space to cut at. "etc." and an ellipsis that ends a
    word ("waited... Then") end a sentence before a capital; a list item's number ("1. The origin") stays with its
    item. Cuts fall only on whitespace: no word is split, and
    the sentences joined by spaces give the text's words in order.
    """
    sentences = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        start = 0
        for match in _SENTENCE_END.finditer(paragraph):
            end = match.start() + len(match.group().rstrip())  # after the punctuation and closers
            if _LIST_NUMBER.fullmatch(paragraph, start, end):  # "1. The origin…": the number opens the item
                continue
            if _ends_sentence(paragraph[paragraph.rfind(" ", 0, match.start()) + 1 : end], paragraph[match.end()]):
                sentences.append(paragraph[start:end])
                start = match.end()
        sentences.append(paragraph[start:])
    return [s for s in sentences if s]


def _ends_sentence(word: str, following: str) -> bool:
    """Whether the whitespace-free `word` ending in . ! ? or … ends its sentence, `following` being the next character."""
    core = word.rstrip("\"')]\u201d\u2019")
    if core != word or core.endswith(("!", "?")):  # a closing quote or bracket, or ! ?
        return True
    if core.endswith(("...", "\u2026")):
        return bool(core.rstrip(".\u2026"))  # attached to a word: ends it; alone ("the ... Peter"): an omission
    core = core[:-1].lstrip("\"'([\u201c\u2018")
    if re.fullmatch(r"[A-Z]", core) or _DOTTED.fullmatch(core):  # L. / A.M. / e.g.
        return False
    lowered = core.lower()
    return lowered not in NEVER_END and not (lowered in BEFORE_NUMBER and following.isdigit())


def chunk_spans(n_tokens: int, size: int, overlap: int = 0) -> list[tuple[int, int]]:
    """[start, end) token windows of at most `size`, each overlapping the previous by `overlap`."""
    if size <= 0 or not 0 <= overlap < size:
        raise InputError(f"chunk size must be > 0 and 0 <= overlap < size (got {size}, {overlap})")
    spans, start = [], 0
    while start < n_tokens:
        end = min(start + size, n_tokens)
        spans.append((start, end))
        if end == n_tokens:
            break
        start = end - overlap
    return spans


def split_chunks(tokenizer, text: str, size: int, overlap: int) -> list[str]:
    """A document as chunks (jitrl-mvp retrieves them, ace curates them): whole sentences packed into chunks
    of at most `size` tokens (as `tokenizer` counts them); each chunk starts with the previous chunk's last
    sentences, up to `overlap` tokens. A sentence over `size` tokens is cut into windows."""
    from .generation import count_tokens

    pieces = [p for s in split_sentences(text) for p in _windows(tokenizer, s, size, overlap)]
    lengths = [count_tokens(tokenizer, " " + p) for p in pieces]  # as they appear inside a chunk
    chunks, current = [], []
    for i, n in enumerate(lengths):
        if current and sum(lengths[j] for j in current) + n > size:
            chunks.append(current)
            current = _tail(current, lengths, min(overlap, size - n))
        current.append(i)
    return [" ".join(pieces[j] for j in chunk) for chunk in [*chunks, current] if chunk]


def _windows(tokenizer, sentence: str, size: int, overlap: int) -> list[str]:
    offsets = tokenizer(sentence, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= size:
        return [sentence]
    return [sentence[offsets[s][0] : offsets[e - 1][1]].strip() for s, e in chunk_spans(len(offsets), size, overlap)]


def _tail(indices: list[int], lengths: list[int], room: int) -> list[int]:
    """The last of `indices` whose lengths add up to at most `room`."""
    tail: list[int] = []
    for j in reversed(indices):
        if sum(lengths[t] for t in tail) + lengths[j] > room:
            break
        tail.insert(0, j)
    return tail
