"""The `clslm` command line on a tiny model dir: every command, and every bad input with its exit code."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clslm import __version__
from clslm.cli import main
from clslm.documents import Document
from clslm.cli.repl import run_repl
from clslm.session import MANIFEST, Session

from conftest import DOCUMENT, build_model, fast_cli_options, fast_options, snapshot
from helpers import run, run_json
from test_documents import make_encrypted_pdf, make_image_pdf, make_pdf

QUESTION = "Which engineer built the Kessenbrock Light?"
ASK_KEYS = {"question", "answer", "strategy", "model", "prompt_tokens", "context_tokens", "deltas", "seconds"}
REPO = Path(__file__).resolve().parents[1]


def learn_args(session: Path, model_dir: Path, *paths) -> list:
    return ["learn", *paths, "-s", session, "--model", model_dir, "--device", "cpu", *fast_cli_options("ttt")]


@pytest.fixture(scope="module")
def template_session(llama_dir, tmp_path_factory) -> Path:
    """One learned session, built once; tests get their own copy."""
    path = tmp_path_factory.mktemp("template") / "session"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLSLM_HOME", str(tmp_path_factory.mktemp("home")))
        with Session.create(path, model=str(llama_dir), strategy="ttt", options=fast_options("ttt"), device="cpu") as s:
            s.learn([Document(name="kessenbrock", text=DOCUMENT)])
    return path


@pytest.fixture
def session(template_session, tmp_path) -> Path:
    path = tmp_path / "session"
    shutil.copytree(template_session, path)
    return path


@pytest.fixture
def new_doc(tmp_path) -> Path:
    """A document the template session has not learned (learning doc_file's content again is skipped)."""
    path = tmp_path / "velmar.txt"
    path.write_text("The Velmar Bridge opened in 1902. It has seven stone arches over the river Oss.", encoding="utf-8")
    return path


def manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST).read_text(encoding="utf-8"))


# ---- commands ---------------------------------------------------------------------------------------


def test_learn_json(capfd, tmp_path, llama_dir, doc_file):
    path = tmp_path / "s"
    result = run_json(capfd, *learn_args(path, llama_dir, doc_file))
    assert set(result) == {"session", "strategy", "documents", "state_bytes"}
    assert result["session"] == str(path) and result["strategy"] == "ttt"
    [doc] = result["documents"]
    assert {"name", "sha256", "tokens", "loss_before", "loss_after", "seconds"} <= set(doc)
    assert doc["name"] == str(doc_file) and doc["sha256"] == Document("x", DOCUMENT).sha256
    assert doc["loss_after"] < doc["loss_before"]
    data = manifest(path)
    assert data["state"]["tensors"]["bytes"] > 0
    assert result["state_bytes"] == sum(entry["bytes"] for entry in data["state"].values() if entry)
    assert data["model"]["ref"] == str(llama_dir) and data["strategy"]["config"]["epochs"] == 3


def test_learn_text_output_and_progress_on_stderr(capfd, tmp_path, llama_dir, doc_file):
    code, out, err = run(capfd, *learn_args(tmp_path / "s", llama_dir, doc_file))
    assert code == 0
    assert "learned" in out and "kessenbrock.txt" in out and "state" in out
    assert "loss" in err  # progress with the loss goes to stderr
    assert "━" not in out


def test_learn_several_paths_dirs_and_stdin(capfd, tmp_path, llama_dir, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The Velmar Bridge opened in 1902.", encoding="utf-8")
    (docs / "b.md").write_text("It has seven stone arches.", encoding="utf-8")
    jsonl = tmp_path / "more.jsonl"
    jsonl.write_text(json.dumps({"id": "q", "body": "Brackley lies on the river Oss."}) + "\n", encoding="utf-8")
    result = run_json(
        capfd, *learn_args(tmp_path / "s", llama_dir, docs, jsonl, "-"), "--text-field", "body", stdin=DOCUMENT, monkeypatch=monkeypatch
    )
    names = [d["name"] for d in result["documents"]]
    assert names == [str(docs / "a.txt"), str(docs / "b.md"), f"{jsonl}#q", "stdin"]
    assert len(manifest(tmp_path / "s")["documents"]) == 4


def test_learn_pdf_with_password(capfd, tmp_path, llama_dir):
    pdf = make_encrypted_pdf(tmp_path / "secret.pdf", password="pw")
    result = run_json(capfd, *learn_args(tmp_path / "s", llama_dir, pdf), "--password", "pw")
    assert result["documents"][0]["tokens"] > 0


def test_learn_again_reads_settings_from_the_session(capfd, session):
    doc = session.parent / "more.txt"
    doc.write_text("The Velmar Bridge opened in 1902.", encoding="utf-8")
    # No --model, no --strategy: both come from the manifest.
    result = run_json(capfd, "learn", doc, "-s", session, "--device", "cpu")
    assert result["strategy"] == "ttt"
    assert [d["name"] for d in manifest(session)["documents"]] == ["kessenbrock", str(doc)]


def test_ask_json(capfd, session, llama_dir):
    before = snapshot(session)
    result = run_json(capfd, "ask", QUESTION, "-s", session, "--device", "cpu", "--max-new-tokens", "6")
    assert set(result) == ASK_KEYS
    assert result["question"] == QUESTION and result["strategy"] == "ttt" and result["model"] == str(llama_dir)
    assert result["deltas"] is True and result["context_tokens"] == 0
    assert isinstance(result["answer"], str) and result["seconds"] >= 0
    # Only the question, in the chat template: count the tokens of that prompt by hand.
    with Session.open(session, device="cpu") as s:
        tokenizer = s.strategy().tokenizer
        expected = s.ask(QUESTION, max_new_tokens=6)
    prompt = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    assert result["prompt_tokens"] == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert result["answer"] == expected.text
    assert snapshot(session) == before, "ask never writes to the session"


def test_ask_compare_base_no_deltas_and_show_prompt(capfd, session):
    common = ["-s", session, "--device", "cpu", "--max-new-tokens", "6"]
    both = run_json(capfd, "ask", QUESTION, *common, "--compare-base", "--show-prompt")
    assert set(both) == ASK_KEYS | {"base_answer", "prompt"}
    assert both["prompt"] == f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    off = run_json(capfd, "ask", QUESTION, *common, "--no-deltas")
    assert set(off) == ASK_KEYS
    assert off["deltas"] is False and off["context_tokens"] == 0
    assert both["base_answer"] == off["answer"]
    on = run_json(capfd, "ask", QUESTION, *common)
    assert on["answer"] == both["answer"]


def test_ask_several_questions_one_json_line_each(capfd, session):
    other = "Where does the Kessenbrock Light stand?"
    common = ["-s", session, "--device", "cpu", "--max-new-tokens", "5"]
    code, out, _ = run(capfd, "ask", QUESTION, other, *common, "--compare-base", "--json")
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["question"] for r in lines] == [QUESTION, other]
    for line, question in zip(lines, (QUESTION, other)):
        alone = run_json(capfd, "ask", question, *common, "--compare-base")
        assert (line["answer"], line["base_answer"]) == (alone["answer"], alone["base_answer"])


def test_ask_several_questions_checks_all_before_answering(capfd, session):
    code, out, err = run(capfd, "ask", QUESTION, " ", "-s", session, "--device", "cpu", "--max-new-tokens", "3")
    assert code == 3 and out == "" and "one of the questions is empty" in err


def test_ask_text_output(capfd, session):
    code, out, err = run(capfd, "ask", QUESTION, "-s", session, "--device", "cpu", "--max-new-tokens", "4", "--compare-base", "--show-prompt")
    assert code == 0
    assert out.startswith("answer:") and "base model:" in out
    assert QUESTION in err and "prompt tokens" in err


def test_info(capfd, session, llama_dir):
    data = run_json(capfd, "info", "-s", session)
    assert {"session", "format_version", "clslm_version", "model", "strategy", "documents", "state_bytes"} <= set(data)
    assert data["model"]["ref"] == str(llama_dir) and data["strategy"]["name"] == "ttt"
    assert [d["name"] for d in data["documents"]] == ["kessenbrock"]
    assert data["state_bytes"] == sum(e["bytes"] for e in manifest(session)["state"].values() if e)
    code, out, _ = run(capfd, "info", "-s", session)
    assert code == 0 and "kessenbrock" in out and "ttt" in out


def test_reset(capfd, session):
    settings = {k: manifest(session)[k] for k in ("model", "strategy")}
    result = run_json(capfd, "reset", "--yes", "-s", session)
    assert result == {"session": str(session), "forgotten_documents": 1}
    data = manifest(session)
    assert data["documents"] == [] and data["state"] == {"tensors": None, "extra": None}
    assert {k: data[k] for k in settings} == settings
    assert not list(session.glob("deltas-*"))
    assert run_json(capfd, "info", "-s", session)["state_bytes"] == 0


@pytest.mark.parametrize("answer", ["n\n", ""], ids=["declined", "no-stdin"])
def test_reset_needs_confirmation(capfd, session, monkeypatch, answer):
    before = snapshot(session)
    code, _, err = run(capfd, "reset", "-s", session, stdin=answer, monkeypatch=monkeypatch)
    assert code == 0  # declining is not an error (issue 18; more in test_cli_edges.py)
    assert "Traceback" not in err and "error" not in err
    assert snapshot(session) == before


def test_reset_confirmed_interactively(capfd, session, monkeypatch):
    code, out, _ = run(capfd, "reset", "-s", session, stdin="y\n", monkeypatch=monkeypatch)
    assert code == 0 and "forgot 1 document" in out
    assert manifest(session)["documents"] == []


def test_strategies_json(capfd, planned_strategy):
    rows = {row["name"]: row for row in run_json(capfd, "strategies")["strategies"]}
    assert {"ttt", "ttt-linear", "jitrl-mvp", "jitrl-full", "ace", "doc2lora"} <= set(rows)
    assert rows["ttt"]["available"] is True
    assert {"lr", "epochs", "layers", "alpha", "format", "seed"} <= set(rows["ttt"]["options"])
    assert rows["ttt"]["options"]["format"] == "chat"
    assert rows["ace"]["available"] is True and "llm_model" in rows["ace"]["options"]
    assert rows[planned_strategy]["available"] is False and rows[planned_strategy]["options"] == {}
    code, out, _ = run(capfd, "strategies", "--options")
    assert code == 0 and "ttt" in out and "epochs=" in out


def test_version(capfd):
    code, out, err = run(capfd, "--version")
    assert code == 0 and out.strip() == f"clslm {__version__}" and err == ""


@pytest.mark.parametrize("command", [[], ["learn"], ["ask"], ["info"], ["reset"], ["strategies"], ["interactive"]])
def test_help(capfd, command):
    code, out, _ = run(capfd, *command, "--help")
    assert code == 0
    assert "Usage" in out
    if not command:
        assert "Exit codes" in out and "4 session error" in out.replace("\n", " ")


def test_bare_clslm_shows_help(capfd):
    code, out, err = run(capfd)
    assert code == 2 and "Usage" in out + err and "learn" in out + err


def test_interactive_via_stdin(capfd, tmp_path, llama_dir, doc_file, monkeypatch):
    path = tmp_path / "s"
    lines = f"{QUESTION}\n\n:info\n:base {QUESTION}\n:nonsense\n:learn {tmp_path / 'missing.txt'}\n:reset\n:info\n:quit\nnever asked\n"
    code, out, err = run(
        capfd,
        "interactive",
        doc_file,
        "-s",
        path,
        "--model",
        llama_dir,
        "--device",
        "cpu",
        "--max-new-tokens",
        "4",
        *fast_cli_options("ttt"),
        stdin=lines,
        monkeypatch=monkeypatch,
    )
    assert code == 0, err
    assert "learned" in out and "kessenbrock.txt" in out
    assert "ttt on" in out and "1 document(s)" in out and "0 document(s)" in out
    assert "base:" in out and "forgot everything learned" in out
    assert ":learn PATH" in out  # the help line, shown again for an unknown command
    assert "missing.txt: no such file" in " ".join(err.split())  # an error inside the REPL is reported; the REPL goes on
    assert "Traceback" not in err
    assert out.count("prompt tokens") + err.count("prompt tokens") == 1  # exactly one question asked
    assert manifest(path)["documents"] == []  # :reset was committed


def test_run_repl_with_a_fake_reader(session, doc_file):
    from rich.console import Console

    console, errors = Console(file=io.StringIO(), width=200), Console(file=io.StringIO(), width=200)
    other = write(doc_file.parent / "rowing.txt", "Ulla Brenning founded the Tamsford Rowing Club in 1911.")
    # doc_file holds the content the session learned already: skipped; rowing.txt is learned
    script = iter([":info", f":learn {doc_file}", f":learn {other}", ":info", QUESTION, ":base   ", "   "])

    def read(prompt):
        assert prompt == "clslm> "
        try:
            return next(script)
        except StopIteration:
            raise EOFError from None  # Ctrl-D ends the REPL

    with Session.open(session, device="cpu") as s:
        run_repl(s, first_document=None, console=console, errors=errors, max_new_tokens=4, read=read)
    out, err = console.file.getvalue(), errors.file.getvalue()
    assert "1 document(s)" in out and "2 document(s)" in out
    assert f"{doc_file}: already learned" in err
    assert out.rstrip().count("\n") > 4 and str(other) in out  # :info lists the documents, full names
    assert "question is empty" in err  # ":base" with no question: an error, and the REPL goes on
    assert len(manifest(session)["documents"]) == 2


# ---- bad input: exit code, one line on stderr, session unchanged ------------------------------------------


def check_failure(capfd, args, code, match, session: Path, **kw) -> str:
    before = snapshot(session)
    got, out, err = run(capfd, *args, **kw)
    assert got == code, err
    assert "Traceback" not in err and "internal error" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"one line on stderr, got: {err!r}"
    assert match in lines[0], lines[0]
    assert lines[0].startswith("error:")
    assert out == ""
    assert snapshot(session) == before, "the session changed"
    return lines[0]


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


BAD_DOCUMENTS = {
    "missing-file": (lambda d: d / "nope.txt", "no such file"),
    "empty": (lambda d: write(d / "empty.txt", ""), "document is empty"),
    "whitespace": (lambda d: write(d / "blank.md", " \n\t \r\n"), "document is empty"),
    "binary": (lambda d: write(d / "photo.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))), "binary file"),
    "corrupt-pdf": (lambda d: write(d / "random.pdf", os.urandom(2048)), "cannot read PDF"),
    "truncated-pdf": (lambda d: write(d / "cut.pdf", make_pdf(d / "full.pdf").read_bytes()[:400]), "damaged PDF"),
    "encrypted-pdf": (lambda d: make_encrypted_pdf(d / "secret.pdf"), "encrypted; give --password"),
    "image-only-pdf": (lambda d: make_image_pdf(d / "scan.pdf"), "no text layer"),
    "empty-dir": (lambda d: (d / "emptydir").mkdir() or d / "emptydir", "no supported files"),
    "bad-jsonl": (lambda d: write(d / "docs.jsonl", '{"text": "ok"}\n{oops\n'), "docs.jsonl:2: invalid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_DOCUMENTS))
def test_bad_document_on_an_existing_session(capfd, session, case):
    make, match = BAD_DOCUMENTS[case]
    bad = make(session.parent)
    check_failure(capfd, ["learn", bad, "-s", session, "--device", "cpu"], 3, match, session)


@pytest.mark.parametrize("case", ["missing-file", "empty", "binary", "encrypted-pdf"])
def test_bad_document_creates_no_session(capfd, tmp_path, llama_dir, case):
    make, match = BAD_DOCUMENTS[case]
    path = tmp_path / "new-session"
    check_failure(capfd, learn_args(path, llama_dir, make(tmp_path)), 3, match, path)
    assert not path.exists()


def test_one_bad_document_among_good_ones_learns_nothing(capfd, session):
    good = write(session.parent / "good.txt", "The Velmar Bridge opened in 1902.")
    bad = write(session.parent / "empty.txt", "  ")
    check_failure(capfd, ["learn", good, bad, "-s", session, "--device", "cpu"], 3, "document is empty", session)


def test_empty_stdin(capfd, session, monkeypatch):
    check_failure(capfd, ["learn", "-", "-s", session, "--device", "cpu"], 3, "stdin: document is empty", session, stdin="  \n", monkeypatch=monkeypatch)


def test_unknown_strategy(capfd, tmp_path, llama_dir, doc_file):
    path = tmp_path / "s"
    line = check_failure(capfd, [*learn_args(path, llama_dir, doc_file), "--strategy", "nope"], 2, "unknown strategy 'nope'", path)
    assert "ttt" in line  # lists the choices
    assert not path.exists()


def test_not_implemented_strategy(capfd, tmp_path, llama_dir, doc_file, planned_strategy):
    path = tmp_path / "s"
    check_failure(capfd, ["learn", doc_file, "-s", path, "--model", llama_dir, "--strategy", planned_strategy], 3, "not implemented yet", path)
    assert not path.exists()


@pytest.mark.parametrize(
    "option, match",
    [("colour=red", "unknown option 'colour'"), ("epochs=many", "epochs"), ("lr=-1", "lr"), ("format=poem", "format"), ("epochs", "expected KEY=VALUE")],
    ids=["bad-key", "bad-int", "refused-value", "bad-choice", "no-equals"],
)
def test_bad_option(capfd, tmp_path, llama_dir, doc_file, session, option, match):
    for path, args in [
        (tmp_path / "new", ["learn", doc_file, "-s", tmp_path / "new", "--model", llama_dir, "-o", option]),
        (session, ["learn", doc_file, "-s", session, "--device", "cpu", "-o", option]),
    ]:
        line = check_failure(capfd, args, 3, match, path)
        if option != "epochs":
            assert "valid keys:" in line and "epochs" in line and "lr" in line
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", [["ask", QUESTION], ["info"], ["reset", "--yes"]])
def test_missing_session(capfd, tmp_path, command):
    path = tmp_path / "no-session"
    check_failure(capfd, [*command, "-s", path], 4, "no session here", path)
    assert not path.exists()


@pytest.mark.parametrize("command", [["ask", QUESTION], ["info"], ["reset", "--yes"], ["learn", "DOC"]])
def test_corrupt_manifest(capfd, session, new_doc, command):
    (session / MANIFEST).write_text('{"format_version": 1, "model": ', encoding="utf-8")
    args = [new_doc if a == "DOC" else a for a in command]
    check_failure(capfd, [*args, "-s", session], 4, "corrupt manifest", session)


@pytest.mark.parametrize("command", [["ask", QUESTION], ["learn", "DOC"]])
def test_truncated_safetensors(capfd, session, new_doc, command):
    data = manifest(session)
    state = session / data["state"]["tensors"]["file"]
    state.write_bytes(state.read_bytes()[:100])
    args = [new_doc if a == "DOC" else a for a in command]
    check_failure(capfd, [*args, "-s", session, "--device", "cpu"], 4, "truncated or altered", session)


def test_session_made_with_another_model(capfd, tmp_path, llama_dir, tokenizer, doc_file, new_doc):
    model_dir = tmp_path / "model"
    shutil.copytree(llama_dir, model_dir)
    path = tmp_path / "s"
    run_json(capfd, *learn_args(path, model_dir, doc_file))
    shutil.rmtree(model_dir)
    build_model("gemma3", tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    check_failure(capfd, ["ask", QUESTION, "-s", path, "--device", "cpu"], 4, "fingerprint changed", path)
    check_failure(capfd, ["learn", new_doc, "-s", path, "--device", "cpu"], 4, "fingerprint changed", path)


def test_other_model_or_strategy_on_an_existing_session(capfd, session, tmp_path, doc_file):
    check_failure(capfd, ["learn", doc_file, "-s", session, "--model", tmp_path / "other-model"], 4, "made with model", session)
    check_failure(capfd, ["learn", doc_file, "-s", session, "--strategy", "ace"], 4, "uses strategy 'ttt'", session)


def test_busy_session(capfd, session, new_doc):
    with Session.open(session):
        check_failure(capfd, ["learn", new_doc, "-s", session, "--device", "cpu"], 4, "session busy", session)
        check_failure(capfd, ["ask", QUESTION, "-s", session, "--device", "cpu"], 4, "session busy", session)


def test_empty_question(capfd, session):
    check_failure(capfd, ["ask", "  ", "-s", session, "--device", "cpu"], 3, "question is empty", session)


def test_too_many_tokens(capfd, session, new_doc):
    check_failure(capfd, ["learn", new_doc, "-s", session, "--device", "cpu", "--max-tokens", "5"], 3, "more than --max-tokens 5", session)


def test_missing_model(capfd, tmp_path, doc_file):
    path = tmp_path / "s"
    check_failure(capfd, ["learn", doc_file, "-s", path, "--model", tmp_path / "nowhere.gguf"], 3, "no such file", path)
    assert not path.exists()


@pytest.mark.parametrize(
    "args, match",
    [(["ask", QUESTION, "--max-new-tokens", "0"], "--max-new-tokens"), (["learn"], "Missing argument"), (["learn", "x", "--bogus"], "--bogus"), (["frobnicate"], "frobnicate")],
    ids=["out-of-range", "missing-argument", "unknown-option", "unknown-command"],
)
def test_usage_errors(capfd, tmp_path, args, match):
    check_failure(capfd, [*args, "-s", tmp_path / "s"] if args[0] != "frobnicate" else args, 2, match, tmp_path / "s")


def test_debug_env_shows_the_exception(capfd, tmp_path, monkeypatch):
    monkeypatch.setenv("CLSLM_DEBUG", "1")
    from clslm.errors import SessionNotFound

    with pytest.raises(SessionNotFound):
        main(["info", "-s", str(tmp_path / "none")])


# ---- fresh processes ------------------------------------------------------------------------------------


def subprocess_env(clslm_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLSLM_")}
    return env | {"CLSLM_HOME": str(clslm_home), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def test_cli_module_does_not_import_torch(clslm_home):
    code = "import clslm.cli, sys; assert 'torch' not in sys.modules, 'torch imported'; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=subprocess_env(clslm_home), cwd=REPO, timeout=120)


def test_help_in_a_fresh_process_does_not_import_torch(clslm_home):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "clslm", "--help"], capture_output=True, text=True, env=subprocess_env(clslm_home), cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "Exit codes" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "clslm" in imported and "typer" in imported
    assert not {"torch", "transformers", "safetensors", "pymupdf"} & imported


def test_learn_then_ask_in_new_processes(tmp_path, llama_dir, doc_file, clslm_home):
    """The console script, as a user runs it: learn in one process, ask in another."""
    clslm = Path(sys.executable).parent / "clslm"
    command = [str(clslm)] if clslm.exists() else [sys.executable, "-m", "clslm"]
    env, path = subprocess_env(clslm_home), tmp_path / "s"
    learn = subprocess.run(
        [*command, *map(str, learn_args(path, llama_dir, doc_file)), "--json"], capture_output=True, text=True, env=env, timeout=300
    )
    assert learn.returncode == 0, learn.stderr
    assert json.loads(learn.stdout)["documents"][0]["name"] == str(doc_file)
    with Session.open(path):  # a second process on a held session is refused at once
        busy = subprocess.run([*command, "ask", QUESTION, "-s", str(path), "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert busy.returncode == 4 and "session busy" in busy.stderr and busy.stdout == ""
    ask = subprocess.run(
        [*command, "ask", QUESTION, "-s", str(path), "--device", "cpu", "--max-new-tokens", "6", "--json", "--compare-base"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert ask.returncode == 0, ask.stderr
    result = json.loads(ask.stdout)
    assert set(result) == ASK_KEYS | {"base_answer"} and result["context_tokens"] == 0
    with Session.open(path, device="cpu") as s:
        assert result["answer"] == s.ask(QUESTION, max_new_tokens=6).text
        assert result["base_answer"] == s.ask(QUESTION, deltas=False, max_new_tokens=6).text


def test_ctrl_c_while_learning_leaves_the_session(capfd, session, new_doc, monkeypatch):
    from clslm.strategies.ttt import TTT

    def interrupted(self, document, on_step=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(TTT, "learn", interrupted)
    before = snapshot(session)
    code, out, err = run(capfd, "learn", new_doc, "-s", session, "--device", "cpu")
    assert code == 130
    assert "interrupted; the session is unchanged" in err and "Traceback" not in err
    assert snapshot(session) == before
