"""Reading documents (txt/md/jsonl/pdf/dir/stdin, encodings, bad input) and splitting text."""

from __future__ import annotations

import io
import json
import os
import re

import pymupdf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clslm.documents import Document, chunk_spans, decode_text, read_documents, split_sentences
from clslm.errors import InputError

TEXT = "The Kessenbrock Light was finished in 1793. Its tower is 41 metres tall."


def read_one(path, **kw) -> Document:
    [doc] = read_documents(path, **kw)
    return doc


def bad(path, match: str, **kw) -> InputError:
    with pytest.raises(InputError, match=match) as e:
        read_documents(path, **kw)
    assert e.value.exit_code == 3
    assert "\n" not in str(e.value), "errors are one line"
    return e.value


# ---- PDFs built here with pymupdf -----------------------------------------------------------------------


def make_pdf(path, pages=(TEXT,), **save_kw):
    pdf = pymupdf.open()
    for text in pages:
        page = pdf.new_page()
        if text:
            page.insert_text((72, 72), text, fontsize=9)
    pdf.save(path, **save_kw)
    pdf.close()
    return path


def make_image_pdf(path):
    """A 'scanned' page: an image and no text layer."""
    pdf = pymupdf.open()
    page = pdf.new_page()
    pix = pymupdf.Pixmap(pymupdf.csRGB, pymupdf.IRect(0, 0, 40, 40), False)
    pix.set_rect(pix.irect, (200, 30, 30))
    page.insert_image(pymupdf.Rect(72, 72, 272, 272), pixmap=pix)
    pdf.save(path)
    pdf.close()
    return path


def make_encrypted_pdf(path, password="s3cret"):
    return make_pdf(path, encryption=pymupdf.PDF_ENCRYPT_AES_256, user_pw=password, owner_pw="owner-" + password)


# ---- text files -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".txt", ".md", ".markdown", ".rst", ".TXT"])
def test_text_files(tmp_path, suffix):
    path = tmp_path / f"doc{suffix}"
    path.write_text(TEXT, encoding="utf-8")
    doc = read_one(path)
    assert (doc.name, doc.text, doc.encoding) == (str(path), TEXT, "utf-8")


def test_unknown_suffix_is_read_as_text(tmp_path):
    path = tmp_path / "notes"
    path.write_text(TEXT, encoding="utf-8")
    assert read_one(path).text == TEXT


@pytest.mark.parametrize(
    "data, text, encoding",
    [
        ("Café déjà vu – 41 m".encode("utf-8"), "Café déjà vu – 41 m", "utf-8"),
        (b"\xef\xbb\xbf" + "Café".encode("utf-8"), "Café", "utf-8"),  # BOM dropped
        ("Café — “quoted” 41 m".encode("utf-16"), "Café — “quoted” 41 m", "utf-16"),  # LE with BOM
        (b"\xfe\xff" + "Café".encode("utf-16-be"), "Café", "utf-16"),  # BE with BOM
        ("Café – “smart quotes” €5".encode("cp1252"), "Café – “smart quotes” €5", "cp1252"),
    ],
    ids=["utf-8", "utf-8-bom", "utf-16-le", "utf-16-be", "cp1252"],
)
def test_encodings(tmp_path, data, text, encoding):
    path = tmp_path / "doc.txt"
    path.write_bytes(data)
    doc = read_one(path)
    assert (doc.text, doc.encoding) == (text, encoding)
    assert decode_text(data, "x") == (text, encoding)


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10",
        b"ELF\x7f\x02\x01\x01" + bytes(range(256)) * 4,
        bytes([7, 8, 11, 14, 15, 16, 17, 18, 19, 20]) * 50 + b"some text",  # control characters, no NUL
    ],
    ids=["png", "elf", "control-chars"],
)
def test_binary_is_rejected(tmp_path, data):
    path = tmp_path / "doc.txt"
    path.write_bytes(data)
    bad(path, "binary file")


def test_undecodable_text_is_rejected(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_bytes(b"abc \x81\x8d\x8f\x90\x9d def")  # invalid UTF-8 and undefined in cp1252
    bad(path, "not valid UTF-8")


def test_odd_utf16_is_rejected(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_bytes(b"\xff\xfe" + "abc".encode("utf-16-le") + b"\x00")  # odd length after the BOM
    bad(path, "UTF-16")


@pytest.mark.parametrize("content", ["", "   ", "\n\n\t  \r\n", "\ufeff"], ids=["empty", "spaces", "whitespace", "bom-only"])
def test_empty_documents_are_rejected(tmp_path, content):
    path = tmp_path / "doc.txt"
    path.write_text(content, encoding="utf-8")
    bad(path, "empty")


def test_missing_file(tmp_path):
    bad(tmp_path / "nope.txt", "no such file")


def test_size_limit(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(TEXT, encoding="utf-8")
    bad(path, "larger than", max_bytes=10)
    assert read_one(path, max_bytes=len(TEXT)).text == TEXT


def test_document_from_text():
    doc = Document.from_text(TEXT, name="n")
    assert doc.sha256 == __import__("hashlib").sha256(TEXT.encode()).hexdigest()
    with pytest.raises(InputError):
        Document.from_text("  \n")


# ---- stdin ------------------------------------------------------------------------------------------


def fake_stdin(monkeypatch, data: bytes):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_stdin(monkeypatch):
    fake_stdin(monkeypatch, TEXT.encode("utf-8"))
    doc = read_one("-")
    assert (doc.name, doc.text) == ("stdin", TEXT)


def test_stdin_utf16(monkeypatch):
    fake_stdin(monkeypatch, TEXT.encode("utf-16"))
    assert read_one("-").text == TEXT


@pytest.mark.parametrize("data, match", [(b"  \n", "empty"), (b"\x00\x01\x02binary", "binary"), (b"x" * 50, "larger than")])
def test_bad_stdin(monkeypatch, data, match):
    fake_stdin(monkeypatch, data)
    bad("-", match, max_bytes=40)


# ---- jsonl ------------------------------------------------------------------------------------------


def test_jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [{"id": "a", "text": "First document."}, {"text": "Second document.", "other": 1}]
    path.write_text("\n".join(json.dumps(x) for x in lines[:1]) + "\n\n" + json.dumps(lines[1]) + "\n", encoding="utf-8")
    docs = read_documents(path)
    assert [d.text for d in docs] == ["First document.", "Second document."]
    # Named by id where there is one, else by line number (the blank line still counts).
    assert [d.name for d in docs] == [f"{path}#a", f"{path}#3"]


def test_jsonl_text_field(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"id": "x", "document": "Body text."}) + "\n", encoding="utf-8")
    assert read_one(path, text_field="document").text == "Body text."
    bad(path, r":1: no string field 'text'")


@pytest.mark.parametrize(
    "lines, match",
    [
        (['{"text": "ok"}', '{"text": "ok too"}', "{broken"], r"docs\.jsonl:3: invalid JSON"),
        (['{"text": "ok"}', '["a", "list"]'], r"docs\.jsonl:2: no string field"),
        (['{"text": 42}'], r"docs\.jsonl:1: no string field"),
        (['{"text": "ok"}', '{"id": "blank", "text": "   "}'], r"docs\.jsonl#blank: document is empty"),
        (["", "  "], r"docs\.jsonl: no documents"),
    ],
    ids=["bad-json", "not-object", "not-string", "empty-text", "no-lines"],
)
def test_bad_jsonl_names_the_line(tmp_path, lines, match):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    bad(path, match)


# ---- directories ----------------------------------------------------------------------------------------


def test_directory_reads_supported_files_sorted(tmp_path):
    (tmp_path / "b.md").write_text("Bee text.", encoding="utf-8")
    (tmp_path / "a.txt").write_text("Ay text.", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text('{"text": "See one."}\n{"text": "See two."}\n', encoding="utf-8")
    make_pdf(tmp_path / "d.pdf", pages=("Dee text.",))
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")  # not a supported suffix: skipped
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.txt").write_text("nested", encoding="utf-8")  # not recursive
    docs = read_documents(tmp_path)
    assert [d.text.strip() for d in docs] == ["Ay text.", "Bee text.", "See one.", "See two.", "Dee text."]


def test_directory_without_supported_files(tmp_path):
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    bad(tmp_path, "no supported files")


def test_directory_with_one_bad_file_fails_whole(tmp_path):
    (tmp_path / "a.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "b.txt").write_text("   ", encoding="utf-8")
    bad(tmp_path, r"b\.txt: document is empty")


# ---- PDFs -------------------------------------------------------------------------------------------


def test_pdf(tmp_path):
    path = make_pdf(tmp_path / "doc.pdf", pages=("The Kessenbrock Light was finished in 1793.", "", "Its tower is 41 metres tall."))
    doc = read_one(path)
    assert "finished in 1793" in doc.text and "41 metres" in doc.text
    assert doc.text.index("1793") < doc.text.index("41 metres")


def test_pdf_headings_stay_apart_from_the_sentence_below():
    """The bundled demo report: a heading is a text block of its own, not glued to the next sentence."""
    from importlib.resources import files

    sentences = split_sentences(read_one(files("clslm").joinpath("data/sample-report.pdf")).text)
    assert sentences[:2] == ["The Varrow Observatory", "Founding"]
    assert "The Great Telescope" in sentences
    assert sentences[2].startswith("The Varrow Observatory stands on Mount Telleck")


def test_pdf_suffix_is_case_insensitive(tmp_path):
    path = make_pdf(tmp_path / "DOC.PDF")
    assert "1793" in read_one(path).text


def test_corrupt_pdf_random_bytes(tmp_path):
    path = tmp_path / "random.pdf"
    path.write_bytes(os.urandom(3000))
    bad(path, "cannot read PDF")


def test_corrupt_pdf_not_a_pdf(tmp_path):
    path = tmp_path / "text.pdf"
    path.write_text("just some text pretending to be a PDF", encoding="utf-8")
    bad(path, "cannot read PDF")


@pytest.mark.parametrize("keep", [0.02, 0.5])
def test_truncated_pdf(tmp_path, keep):
    data = make_pdf(tmp_path / "full.pdf").read_bytes()
    path = tmp_path / "truncated.pdf"
    path.write_bytes(data[: int(len(data) * keep)])
    error = bad(path, "PDF")
    # Never the scanned-image advice for a damaged file.
    assert "OCR" not in str(error)


def test_encrypted_pdf(tmp_path):
    path = make_encrypted_pdf(tmp_path / "secret.pdf")
    bad(path, "encrypted; give --password")
    bad(path, "wrong PDF password", password="guess")
    assert "1793" in read_one(path, password="s3cret").text


def test_image_only_pdf(tmp_path):
    bad(make_image_pdf(tmp_path / "scan.pdf"), "no text layer")


def test_blank_pdf(tmp_path):
    bad(make_pdf(tmp_path / "blank.pdf", pages=("",)), "no text layer")


# ---- split_sentences ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, sentences",
    [
        ("One. Two! Three? four.", ["One.", "Two!", "Three? four."]),
        ("It opened in 1902. 41 metres tall.", ["It opened in 1902.", "41 metres tall."]),
        ('She said "Stop." Then she left.', ['She said "Stop."', "Then she left."]),
        ("(It rained.) Next day came.", ["(It rained.)", "Next day came."]),
        ("Para one\nstill one.\n\n  Para two.", ["Para one still one.", "Para two."]),
        ("Dr. Smith arrived. e.g. this", ["Dr. Smith arrived. e.g. this"]),  # no capital after "arrived."
        ("", []),
        ("  \n\n ", []),
        ("No end punctuation", ["No end punctuation"]),
    ],
)
def test_split_sentences(text, sentences):
    assert split_sentences(text) == sentences


# Issue 25: real READMEs (zlib's) cut at initials, abbreviations and list numbers.
@pytest.mark.parametrize(
    "text, sentences",
    [
        (
            "The deflate and zlib specifications were written by L. Peter Deutsch. Thanks to all the people.",
            ["The deflate and zlib specifications were written by L. Peter Deutsch.", "Thanks to all the people."],
        ),
        (
            "A Python interface to zlib written by A.M. Kuchling <amk@amk.ca> is available. Use it.",
            ["A Python interface to zlib written by A.M. Kuchling <amk@amk.ca> is available.", "Use it."],
        ),
        (
            "Mark Nelson wrote an article about zlib for the Jan.  1997\nissue of Dr.  Dobb's Journal; a copy is online.",
            ["Mark Nelson wrote an article about zlib for the Jan. 1997 issue of Dr. Dobb's Journal; a copy is online."],
        ),
        ("zlib 1.2.13 is a library. The changes made in version 1.2.13. Are here.", ["zlib 1.2.13 is a library.", "The changes made in version 1.2.13.", "Are here."]),
        ("The trail is 3.5 km long. It climbs 1,200 m.", ["The trail is 3.5 km long.", "It climbs 1,200 m."]),
        ("Mr. Smith and Mrs. Jones met Ms. Brown on St. James Street. They talked.", ["Mr. Smith and Mrs. Jones met Ms. Brown on St. James Street.", "They talked."]),
        ("Use a codec, e.g. Zlib, or i.e. XZ. Both work.", ["Use a codec, e.g. Zlib, or i.e. XZ.", "Both work."]),
        ("It was Fosk vs. Saalberg. Fosk won.", ["It was Fosk vs. Saalberg.", "Fosk won."]),
        ("See Fig. 3 and No. 7 on Dec. 4. Next.", ["See Fig. 3 and No. 7 on Dec. 4.", "Next."]),
        ("Lamps, lenses, etc. Then came the war.", ["Lamps, lenses, etc.", "Then came the war."]),  # before a capital, etc. ends
        ("The fig. Then the pear. No. It was not.", ["The fig.", "Then the pear.", "No.", "It was not."]),  # not before a number
        ("He waited... Then he left.", ["He waited...", "Then he left."]),
        ("He thanked ... Peter Deutsch. Then \u2026 Adler.", ["He thanked ... Peter Deutsch.", "Then \u2026 Adler."]),  # a lone ellipsis omits
        ("She said \u201cStop.\u201d Then she left.", ["She said \u201cStop.\u201d", "Then she left."]),
        ("(Dr. Fosk) built it. (Prof. Saalberg.) Next.", ["(Dr. Fosk) built it.", "(Prof. Saalberg.)", "Next."]),
        (
            "subject to these restrictions:\n\n1. The origin must not be misrepresented. You must not claim it.\n\n2. Altered versions.",
            ["subject to these restrictions:", "1. The origin must not be misrepresented.", "You must not claim it.", "2. Altered versions."],
        ),
        ("It opened in 1902. 41 metres tall.", ["It opened in 1902.", "41 metres tall."]),  # a number after a sentence stays cut
    ],
)
def test_split_sentences_initials_abbreviations_numbers(text, sentences):
    assert split_sentences(text) == sentences


words = st.text(alphabet=st.sampled_from(list("abcXYZ019.!?\"')( ")), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(words, st.sampled_from(["\n", "\n\n", " \n \n", "\t"])), max_size=30).map("".join))
def test_split_sentences_keeps_every_word_in_order(text):
    sentences = split_sentences(text)
    assert all(s and s == s.strip() and "\n" not in s for s in sentences)
    assert " ".join(sentences).split() == text.split()


tricky = st.sampled_from(["Dr.", "L.", "A.M.", "e.g.", "Jan.", "No.", "7", "1.2.13.", "...", "\u2026", "etc.", "1.", "Peter", "(x.)", "\u201cy.\u201d"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(words, tricky, st.sampled_from(["\n", "\n\n"])), max_size=30).map(" ".join))
def test_split_sentences_keeps_every_word_with_abbreviations(text):
    sentences = split_sentences(text)
    assert all(s and s == s.strip() and "\n" not in s for s in sentences)
    assert " ".join(sentences).split() == text.split()


# ---- chunk_spans ----------------------------------------------------------------------------------


def test_chunk_spans_examples():
    assert chunk_spans(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_spans(10, 4, overlap=1) == [(0, 4), (3, 7), (6, 10)]
    assert chunk_spans(4, 4) == [(0, 4)]
    assert chunk_spans(0, 4) == []


@pytest.mark.parametrize("size, overlap", [(0, 0), (-1, 0), (4, 4), (4, 5), (4, -1)])
def test_chunk_spans_rejects_bad_sizes(size, overlap):
    with pytest.raises(InputError):
        chunk_spans(10, size, overlap)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 400), st.integers(1, 64).flatmap(lambda size: st.tuples(st.just(size), st.integers(0, size - 1))))
def test_chunk_spans_cover_the_input(n, size_overlap):
    size, overlap = size_overlap
    spans = chunk_spans(n, size, overlap)
    if n == 0:
        assert spans == []
        return
    assert spans[0][0] == 0 and spans[-1][1] == n  # covers the input
    for start, end in spans:
        assert 0 <= start < end <= n and end - start <= size  # non-empty, within bounds and size
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        assert s1 < s2 and e1 < e2  # ordered, always advancing
        assert s2 == e1 - overlap  # no gap; exactly `overlap` shared
    covered = set()
    for start, end in spans:
        covered |= set(range(start, end))
    assert covered == set(range(n))
    # Only the last window may be shorter than `size`.
    assert all(end - start == size for start, end in spans[:-1])
