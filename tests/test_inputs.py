"""Untrusted input: session paths and state-file names, document reading limits, encodings, arbitrary
bytes (Hypothesis), and the bad-input corpus under tests/data/bad/ run through learn, ask, info and bench.

Every bad case must end with one `error:` line on stderr and its documented exit code, print nothing
on stdout, and leave the session byte-identical.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clslm import documents
from clslm.documents import load_bytes, read_documents
from clslm.errors import InputError
from clslm.session import MANIFEST, Session

from conftest import DATA, snapshot
from helpers import run, run_json
from test_cli import QUESTION, check_failure, session, template_session  # noqa: F401  (fixtures)
from test_documents import TEXT, make_encrypted_pdf, make_image_pdf, make_pdf

BAD = DATA / "bad"


def manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text(encoding="utf-8"))


# ---- session paths and the names inside a manifest ---------------------------------------------------------


def test_nul_in_a_session_path_is_refused(capfd, tmp_path, doc_file):
    # The command line refuses it as a bad option value (usage, 2); the library as bad input (3).
    for args in (["learn", doc_file], ["ask", QUESTION], ["info"]):
        check_failure(capfd, [*args, "-s", "sess\x00ion"], 2, "embedded null byte", tmp_path)
    with pytest.raises(InputError, match="NUL byte"):
        Session.open_or_create("sess\x00ion")


def test_a_file_where_the_session_directory_should_be(capfd, tmp_path, llama_dir, doc_file):
    path = tmp_path / "not-a-dir"
    path.write_text("mine", encoding="utf-8")
    check_failure(capfd, ["learn", doc_file, "-s", path, "--model", llama_dir, "--device", "cpu"], 4, "cannot use this as a session directory", path)
    for args in (["ask", QUESTION], ["info"], ["reset", "--yes"]):
        check_failure(capfd, [*args, "-s", path], 4, "no session here", path)
    assert path.read_text(encoding="utf-8") == "mine"


def test_a_session_directory_inside_a_file(capfd, tmp_path, llama_dir, doc_file):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    check_failure(capfd, ["learn", doc_file, "-s", blocker / "session", "--model", llama_dir, "--device", "cpu"], 4, "cannot use this as a session directory", tmp_path)


# ---- reading documents: limits before reading, no endless or blocking reads ----------------------------------


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".pdf"])
def test_max_bytes_is_checked_before_reading(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"big{suffix}"
    with open(path, "wb") as f:
        f.truncate(10_000_001)  # sparse: large on paper, nothing to read

    def no_read(*a, **k):
        raise AssertionError("the file was opened before its size was checked")

    monkeypatch.setattr(documents, "open", no_read, raising=False)
    with pytest.raises(InputError, match="larger than --max-bytes 10000000"):
        read_documents(path, max_bytes=10_000_000)


def test_stdin_reads_at_most_max_bytes_plus_one(monkeypatch):
    class Endless:
        """An endless stdin: only a bounded read returns."""

        def read(self, n=-1):
            assert n is not None and n >= 0, "an unbounded read of stdin"
            return b"x" * n

    class Stdin:
        buffer = Endless()

    monkeypatch.setattr("sys.stdin", Stdin())
    with pytest.raises(InputError, match="stdin: larger than --max-bytes 1000"):
        read_documents("-", max_bytes=1000)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_devices_and_pipes_are_refused(tmp_path):
    with pytest.raises(InputError, match="not a regular file"):
        read_documents("/dev/zero")  # endless if read
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_documents(fifo)  # would block forever with no writer
    with pytest.raises(InputError, match="not a regular file"):
        read_documents(Path("/dev/null"))


def test_max_tokens_on_a_first_learn_creates_no_session(capfd, tmp_path, llama_dir, doc_file):
    path = tmp_path / "s"
    check_failure(capfd, ["learn", doc_file, "-s", path, "--model", llama_dir, "--device", "cpu", "--max-tokens", "5"], 3, "more than --max-tokens 5", path)
    assert not path.exists()


@pytest.mark.parametrize(
    "name, data, encoding",
    [
        ("utf8.txt", "Café in Brackley, 41 m.".encode("utf-8"), "utf-8"),
        ("utf16.txt", "Café in Brackley, 41 m.".encode("utf-16"), "utf-16"),
        ("cp1252.md", "Café – “Brackley” €5.".encode("cp1252"), "cp1252"),
        ("utf16.jsonl", (json.dumps({"text": "Café in Brackley."}, ensure_ascii=False) + "\n").encode("utf-16"), "utf-16"),
    ],
)
def test_the_encoding_is_decoded_and_reported(capfd, session, name, data, encoding):  # noqa: F811
    path = session.parent / name
    path.write_bytes(data)
    run_json(capfd, "learn", path, "-s", session, "--device", "cpu")
    learned = run_json(capfd, "info", "-s", session)["documents"][-1]
    assert learned["encoding"] == encoding
    assert "Brackley" in read_documents(path)[0].text


# ---- arbitrary bytes: a document or clslm's InputError, nothing else ------------------------------------------

LOADER_NAMES = ["doc.txt", "doc.md", "doc", "doc.jsonl", "doc.pdf"]


def check_loaded(name: str, data: bytes) -> None:
    try:
        docs = load_bytes(name, data)
    except InputError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert docs and all(d.text.strip() and d.name.startswith(name) for d in docs)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(LOADER_NAMES), st.binary(max_size=2048))
def test_loaders_on_arbitrary_bytes(name, data):
    check_loaded(name, data)


texts = st.text(max_size=300)
encoded = st.tuples(texts, st.sampled_from(["utf-8", "utf-16", "utf-16-le", "cp1252", "latin-1"])).map(lambda p: p[0].encode(p[1], errors="ignore"))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(LOADER_NAMES[:4]), st.one_of(encoded, st.lists(texts.map(lambda t: json.dumps({"text": t})), max_size=5).map(lambda ls: "\n".join(ls).encode())))
def test_loaders_on_arbitrary_text(name, data):
    check_loaded(name, data)


@pytest.fixture(scope="module")
def pdf_bytes(tmp_path_factory) -> bytes:
    return make_pdf(tmp_path_factory.mktemp("pdf") / "doc.pdf", pages=(TEXT, "Its tower is 41 metres tall.")).read_bytes()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_damaged_pdfs(pdf_bytes, data):
    """Valid PDFs with bytes overwritten, cut or spliced: text or InputError."""
    pdf = bytearray(pdf_bytes)
    for _ in range(data.draw(st.integers(0, 8))):
        at = data.draw(st.integers(0, len(pdf) - 1))
        pdf[at : at + 4] = data.draw(st.binary(min_size=0, max_size=4))
    cut = data.draw(st.integers(0, len(pdf)))
    check_loaded("doc.pdf", bytes(pdf[:cut] if data.draw(st.booleans()) else pdf))


# ---- the bad-input corpus (tests/data/bad/) through the CLI ---------------------------------------------------


def build_binary_cases(directory: Path) -> dict[str, tuple[Path, str]]:
    """The binary members of the corpus, made here rather than checked in."""
    pdf = make_pdf(directory / "full.pdf")
    cases = {
        "png.txt": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
        "elf.md": b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 4,
        "control-chars.txt": bytes([7, 8, 11, 14, 15, 16]) * 100 + b"some text",
        "undecodable.txt": b"abc \x81\x8d\x8f\x90\x9d def",
        "odd-utf16.txt": b"\xff\xfe" + "abc".encode("utf-16-le") + b"\x00",
        "random.pdf": os.urandom(4096),
        "truncated.pdf": pdf.read_bytes()[:400],
        "binary.jsonl": b"\x00\x01\x02" * 100,
    }
    made = {name: (directory / name, data) for name, data in cases.items()}
    for path, data in made.values():
        path.write_bytes(data)
    return {
        **{name: (path, "") for name, (path, _) in made.items()},
        "encrypted.pdf": (make_encrypted_pdf(directory / "encrypted.pdf"), ""),
        "image-only.pdf": (make_image_pdf(directory / "image-only.pdf"), ""),
    }


# Corpus file → what the one error line says.
DOCUMENT_ERRORS = {
    "empty.txt": "document is empty",
    "whitespace.md": "document is empty",
    "bom-only.txt": "document is empty",
    "bad-json.jsonl": "bad-json.jsonl:3: invalid JSON",
    "no-text-field.jsonl": "no-text-field.jsonl:1: no string field 'text'",
    "not-object.jsonl": "not-object.jsonl:2: no string field",
    "text-not-string.jsonl": "text-not-string.jsonl:1: no string field",
    "blank-text.jsonl": "blank-text.jsonl#blank: document is empty",
    "only-blank-lines.jsonl": "only-blank-lines.jsonl: no documents",
    "nested.jsonl": "nested.jsonl:2: JSON nested too deeply",
    "fake.pdf": "cannot read PDF",
    "no-pages.pdf": "damaged PDF",
    # built by build_binary_cases
    "png.txt": "binary file",
    "elf.md": "binary file",
    "control-chars.txt": "binary file",
    "undecodable.txt": "not valid UTF-8, UTF-16 or cp1252",
    "odd-utf16.txt": "invalid UTF-16",
    "random.pdf": "cannot read PDF",
    "truncated.pdf": "damaged PDF",
    "binary.jsonl": "binary file",
    "encrypted.pdf": "encrypted; give --password",
    "image-only.pdf": "no text layer",
}


def test_the_corpus_is_all_covered():
    assert {p.name for p in (BAD / "documents").iterdir()} <= set(DOCUMENT_ERRORS)
    assert {p.name for p in (BAD / "manifests").iterdir()} == set(MANIFEST_ERRORS)
    assert {p.name for p in (BAD / "facts").iterdir()} | {p.name for p in (BAD / "general").iterdir()} == set(BENCH_ERRORS)


@pytest.fixture
def bad_documents(tmp_path) -> dict[str, Path]:
    built = build_binary_cases(tmp_path)
    return {p.name: p for p in (BAD / "documents").iterdir()} | {name: path for name, (path, _) in built.items()}


def test_learn_refuses_every_bad_document(capfd, session, bad_documents, tmp_path, llama_dir):  # noqa: F811
    assert set(bad_documents) == set(DOCUMENT_ERRORS)
    for name, path in sorted(bad_documents.items()):
        check_failure(capfd, ["learn", path, "-s", session, "--device", "cpu"], 3, DOCUMENT_ERRORS[name], session)
        new = tmp_path / "never-made"
        check_failure(capfd, ["learn", path, "-s", new, "--model", llama_dir, "--device", "cpu"], 3, DOCUMENT_ERRORS[name], new)
        assert not new.exists()
    # Wrong passwords and devices go the same way.
    check_failure(capfd, ["learn", bad_documents["encrypted.pdf"], "-s", session, "--password", "guess"], 3, "wrong PDF password", session)
    if Path("/dev/zero").exists():
        check_failure(capfd, ["learn", "/dev/zero", "-s", session], 3, "not a regular file", session)


# Manifest file → ((exit code, words) of ask and learn, of info and reset). None: info has nothing to refuse
# (it checks the manifest and the state files; the strategy is loaded only by ask and learn).
CORRUPT = (4, "corrupt manifest")
MANIFEST_ERRORS = {
    "truncated.json": (CORRUPT, CORRUPT),
    "empty.json": (CORRUPT, CORRUPT),
    "list.json": (CORRUPT, CORRUPT),
    "newer-format.json": ((4, "newer clslm"), (4, "newer clslm")),
    "missing-keys.json": (CORRUPT, CORRUPT),
    "patch-model-not-object.json": (CORRUPT, CORRUPT),
    "patch-config-not-object.json": (CORRUPT, CORRUPT),
    "patch-config-wrong-type.json": ((4, "strategy config does not fit 'ttt'"), None),
    "patch-unknown-strategy.json": ((4, "cannot run"), None),
    "patch-state-file-dotdot.json": (CORRUPT, CORRUPT),
    "patch-state-file-absolute.json": (CORRUPT, CORRUPT),
    "patch-state-file-nul.json": (CORRUPT, CORRUPT),
    "patch-state-file-parent.json": (CORRUPT, CORRUPT),
    "patch-state-entry-not-object.json": (CORRUPT, CORRUPT),
    "patch-document-without-fields.json": (CORRUPT, CORRUPT),
    "patch-documents-not-a-list.json": (CORRUPT, CORRUPT),
}


def lay_manifest(session: Path, name: str) -> None:
    source = BAD / "manifests" / name
    if name.startswith("patch-"):
        (session / MANIFEST).write_text(json.dumps(manifest(session) | json.loads(source.read_text(encoding="utf-8"))), encoding="utf-8")
    else:
        (session / MANIFEST).write_bytes(source.read_bytes())


@pytest.mark.parametrize("name", list(MANIFEST_ERRORS))
def test_ask_learn_info_refuse_every_bad_manifest(capfd, session, doc_file, name):  # noqa: F811
    lay_manifest(session, name)
    (code, words), info = MANIFEST_ERRORS[name]
    check_failure(capfd, ["ask", QUESTION, "-s", session, "--device", "cpu"], code, words, session)
    check_failure(capfd, ["learn", doc_file, "-s", session, "--device", "cpu", "--again"], code, words, session)  # its content is learned
    if info:
        check_failure(capfd, ["info", "-s", session], *info, session)
        check_failure(capfd, ["reset", "--yes", "-s", session], *info, session)
    else:
        before = snapshot(session)
        assert run(capfd, "info", "-s", session)[0] == 0
        assert snapshot(session) == before


@pytest.mark.parametrize(
    "damage, words",
    [(lambda p: p.write_bytes(p.read_bytes()[:-1]), "truncated or altered"), (lambda p: p.unlink(), "state file missing")],
    ids=["truncated", "missing"],
)
def test_info_verifies_the_state_files(capfd, session, damage, words):  # noqa: F811
    damage(session / manifest(session)["state"]["tensors"]["file"])
    check_failure(capfd, ["info", "-s", session], 4, words, session)
    check_failure(capfd, ["ask", QUESTION, "-s", session, "--device", "cpu"], 4, words, session)


@pytest.mark.parametrize("question", ["", "   ", "\n\t"], ids=["empty", "spaces", "whitespace"])
def test_ask_refuses_an_empty_question(capfd, session, question):  # noqa: F811
    check_failure(capfd, ["ask", question, "-s", session, "--device", "cpu"], 3, "question is empty", session)


BENCH_ERRORS = {
    "bad-json.jsonl": "line 2: not valid JSON",
    "not-object.jsonl": "line 1: expected a JSON object",
    "missing-qa.jsonl": "line 1: missing field 'qa'",
    "empty-qa.jsonl": "line 1: missing field 'qa'",
    "no-answers.jsonl": "line 1, qa[1]: missing field 'answers'",
    "blank-document.jsonl": "line 1: missing field 'document'",
    "duplicate-id.jsonl": "duplicate id 'a'",
    "empty.jsonl": "empty (expected one JSON object per line)",
    "missing-question.jsonl": "line 1: missing field 'question'",
    "answers-not-a-list.jsonl": "line 1: missing field 'answers'",
}


def test_bench_refuses_every_bad_set(capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 64)
    cases = [(["bench", BAD / "facts" / name], words) for name, words in BENCH_ERRORS.items() if (BAD / "facts" / name).exists()]
    cases += [(["bench", "--general", BAD / "general" / name], words) for name, words in BENCH_ERRORS.items() if (BAD / "general" / name).exists()]
    cases += [(["bench", binary], "cannot read"), (["bench", tmp_path / "missing.jsonl"], "no such file"), (["bench", tmp_path], "cannot read")]
    for args, words in cases:
        check_failure(capfd, [*args, "--device", "cpu", "--out", out], 3, words, tmp_path)
    assert not out.exists()
