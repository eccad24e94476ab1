"""`clslm learn` and `clslm reset`: what a session knows."""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Annotated, Optional

import typer

from ..errors import InputError
from ..options import parse_key_values
from ..paths import DEFAULT_SESSION
from .app import DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, OptionsOpt, SessionOpt, StrategyOpt, WaitOpt, app, check_strategy
from .estimate import estimate_line, record
from .output import emit_json, err, out
from .progress import Reporter


@app.command()
def learn(
    paths: Annotated[list[str], typer.Argument(help="Documents: .txt .md .pdf .jsonl files, directories, or - for stdin.", show_default=False)],
    *,
    session: SessionOpt = DEFAULT_SESSION,
    strategy: StrategyOpt = None,
    model: ModelOpt = None,
    option: OptionsOpt = None,
    text_field: Annotated[str, typer.Option(help="Field holding the text in .jsonl files.")] = "text",
    password: Annotated[Optional[str], typer.Option(help="Password for encrypted PDFs.")] = None,
    max_bytes: Annotated[int, typer.Option(min=1, help="Refuse files larger than this.")] = 50_000_000,
    max_tokens: Annotated[int, typer.Option(min=1, help="Refuse documents longer than this many model tokens.")] = 200_000,
    again: Annotated[bool, typer.Option("--again", help="Learn a document even when its content is already in the session.")] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    wait: WaitOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Study documents: the strategy's learned state is saved to the session (created on first use)."""
    from ..documents import read_documents
    from ..session import Session
    from ..session_documents import SHORT_HASH, split_known

    options = parse_key_values(option)
    documents = [d for p in paths for d in read_documents(p, text_field=text_field, password=password, max_bytes=max_bytes)]
    with Session.open_or_create(session, model=model, strategy=strategy, options=options, device=device, dtype=dtype, wait=wait) as s:
        documents, known = (documents, []) if again else split_known(s.documents, documents)
        for document, learned in known:
            err.line(f"note: {document.name}: already learned (sha256 {learned['sha256'][:SHORT_HASH]}{'' if learned['name'] == document.name else ', as ' + learned['name']}); skipped (--again learns it again)")
        reports = _learn(s, documents, max_tokens) if documents else []
        result = {"session": str(s.path), "strategy": s.strategy_name, "documents": [asdict(r) for r in reports], "state_bytes": s.state_bytes()}
    if known:
        result["skipped"] = [{"name": d.name, "sha256": d.sha256, "learned_as": learned["name"]} for d, learned in known]
    for r in reports:
        warn_if_nothing_learned(r)
    if as_json:
        emit_json(result)
        return
    for r in reports:
        losses = f"loss {r.loss_before:.3f} → {r.loss_after:.3f}, " if r.loss_before is not None else ""
        out.print(f"learned [bold]{r.name}[/bold]: {r.tokens} tokens, {losses}{r.seconds:.1f} s")
    out.print(f"session {result['session']} ({result['strategy']}): state {result['state_bytes'] / 1e6:.2f} MB")


def _learn(s, documents, max_tokens: int):
    """Learn with progress on stderr, after an estimate of the time when it looks long."""
    tokens = check_tokens(s, documents, max_tokens)
    if note := estimate_line(s, tokens):
        err.line(note)
    with Reporter(err) as reporter:
        on_step, on_document = reporter.learner()
        reports = s.learn(documents, on_step=on_step, on_document=on_document)
    record(s, reports)
    return reports


def warn_if_nothing_learned(report) -> None:
    """A learn whose LLM replies were all unusable (ace: garbage from the server) still succeeds, as it
    learned what it could and the session is consistent; it says so on stderr instead of in silence."""
    extra = report.extra or {}
    if isinstance(extra.get("warning"), str):  # the strategy's own account (ace: an LLM's garbage, replaced by extractive bullets)
        err.line(f"warning: {report.name}: {extra['warning']}")
    elif extra.get("invalid_replies") and not any(extra.get(k) for k in ("added", "updated", "extractive")):
        err.line(f"warning: {report.name}: nothing learned; {extra['invalid_replies']} LLM replies were not usable (check -o llm_url / llm_model)")


def check_tokens(s, documents, max_tokens: int) -> int:
    """The documents' model tokens in all; InputError when one is over --max-tokens."""
    tokenizer, total = s.strategy().tokenizer, 0
    for d in documents:
        n = len(tokenizer(d.text, add_special_tokens=False)["input_ids"])
        if n > max_tokens:
            raise InputError(f"{d.name}: {n} tokens, more than --max-tokens {max_tokens}")
        total += n
    return total


@app.command()
def reset(
    *,
    session: SessionOpt = DEFAULT_SESSION,
    strategy: Annotated[Optional[str], typer.Option("--strategy", callback=check_strategy, help="Start over with this strategy (its default options, or -o).", show_default=False)] = None,
    option: OptionsOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    wait: WaitOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Forget everything learned; keep the session's model, and its strategy and settings unless --strategy or -o."""
    from ..session import Session

    options = parse_key_values(option)
    with Session.open(session, wait=wait) as s:
        count, switch = len(s.documents), f" and switch to strategy {strategy}" if strategy and strategy != s.strategy_name else ""
        declined = not yes and not confirm(f"Forget the {count} document(s) learned in {s.path}{switch}? [y/N]: ")
        if not declined:
            s.reset(strategy, options)
        now = s.strategy_name
    if as_json:
        emit_json({"session": str(session), "forgotten_documents": 0, "declined": True} if declined else {"session": str(session), "forgotten_documents": count} | ({"strategy": now} if switch else {}))
    elif declined:
        out.print(f"reset {session}: declined, nothing forgotten")
    else:
        out.print(f"reset {session}: forgot {count} document(s){'; strategy ' + now if switch else ''}")


@app.command()
def forget(
    document: Annotated[str, typer.Argument(metavar="NAME|HASH", help="The document: its name as `clslm docs` shows it, or its sha256 (the first 4 or more characters).", show_default=False)],
    *,
    session: SessionOpt = DEFAULT_SESSION,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    wait: WaitOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Forget one learned document: its share of the learned state goes, the other documents' stays."""
    from ..session import Session

    with Session.open(session, device=device, dtype=dtype, wait=wait) as s:
        forgotten = s.forget(document)
        result = {"session": str(s.path), "forgotten": [{"name": d["name"], "sha256": d.get("sha256", "")} for d in forgotten], "documents": len(s.documents), "state_bytes": s.state_bytes()}
    if as_json:
        emit_json(result)
        return
    for d in result["forgotten"]:
        out.line(f"forgot {d['name']} ({d['sha256'][:12]})")
    out.line(f"session {result['session']}: {result['documents']} document(s) left, state {result['state_bytes'] / 1e6:.2f} MB")


def confirm(prompt: str) -> bool:
    """Ask on stderr (stdout carries only the result, one JSON object with --json); no answer or end of input
    is no. Declining is not an error: exit 0, the session unchanged."""
    err.print(prompt, end="", markup=False, highlight=False)
    answer = sys.stdin.readline() if sys.stdin is not None else ""
    if not answer.endswith("\n"):
        err.print()
    return answer.strip().lower() in ("y", "yes")
