"""`clslm interactive`: ask repeatedly with the model loaded once."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console

from ..documents import read_documents
from ..errors import ClslmError
from ..paths import clslm_home
from ..session_documents import split_known
from .output import document_lines
from .progress import Reporter

HISTORY = "repl-history"  # in $CLSLM_HOME: the questions and commands typed, one per line
HISTORY_LENGTH = 1000
HELP = "Type a question, or :learn PATH, :forget NAME|HASH, :reset, :info, :base QUESTION (deltas off), :quit"


def run_repl(session, *, first_document: str | None, console: Console, errors: Console, max_new_tokens: int = 64, read=input) -> None:
    if first_document:
        _learn(session, first_document, console, errors)
    console.print(HELP)
    with line_editing(read is input and sys.stdin is not None and sys.stdin.isatty()):
        while True:
            try:
                line = read("clslm> ").strip()
            except EOFError:
                break
            if not line:
                continue
            if line in (":quit", ":q", ":exit"):
                break
            try:
                _handle(session, line, console, errors, max_new_tokens)
            except ClslmError as e:
                errors.print(f"[red]error:[/red] {e}")


@contextlib.contextmanager
def line_editing(enabled: bool) -> Iterator[None]:
    """Line editing and ↑/↓ history for input() at a terminal (stdlib readline, where Python has it), the
    history kept in $CLSLM_HOME/repl-history across sessions of the REPL."""
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain input()
        enabled = False
    if not enabled:
        yield
        return
    path = clslm_home() / HISTORY
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(HISTORY_LENGTH)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)


def _handle(session, line: str, console: Console, errors: Console, max_new_tokens: int) -> None:
    command, _, argument = line.partition(" ")
    if command == ":learn":
        if not argument.strip():  # read_documents("") is the current directory: never learn that unasked
            errors.print("usage: :learn PATH (a document file or a directory of them)")
            return
        _learn(session, argument.strip(), console, errors)
    elif command == ":reset":
        session.reset()
        console.print("forgot everything learned")
    elif command == ":forget":
        for d in session.forget(argument.strip()):
            console.print(f"forgot {d['name']}", markup=False, highlight=False)
    elif command == ":info":
        _info(session, console)
    elif command == ":base":
        console.print(f"[bold]base:[/bold] {session.ask(argument, deltas=False, max_new_tokens=max_new_tokens).text}", highlight=False)
    elif command.startswith(":"):
        console.print(HELP)
    else:
        answer = session.ask(line, max_new_tokens=max_new_tokens)
        console.print(answer.text, highlight=False)
        errors.print(f"[dim]{answer.prompt_tokens} prompt tokens, {answer.seconds:.2f} s[/dim]")


def _info(session, console: Console) -> None:
    """The session in one line, then its documents (hash, tokens, size, when, full name)."""
    info = session.info()
    console.print(f"{info['strategy']['name']} on {info['model']['ref']}: {len(info['documents'])} document(s), {info['state_bytes'] / 1e6:.2f} MB")
    for line in document_lines(info["documents"]) if info["documents"] else []:
        console.print(line, markup=False, highlight=False, soft_wrap=True)


def _learn(session, path: str, console: Console, errors: Console) -> None:
    documents, known = split_known(session.documents, read_documents(path))
    for document, learned in known:
        errors.print(f"note: {document.name}: already learned (as {learned['name']}); skipped", markup=False, highlight=False, soft_wrap=True)
    if not documents:
        return
    with Reporter(errors) as reporter:
        on_step, on_document = reporter.learner()
        reports = session.learn(documents, on_step=on_step, on_document=on_document)
    for r in reports:
        console.print(f"learned {r.name} ({r.tokens} tokens, {r.seconds:.1f} s)")
