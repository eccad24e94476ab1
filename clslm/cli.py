"""The `clslm` command line: a thin Typer layer over Session (no torch import until a command needs it).

Exit codes: 0 ok · 1 internal error · 2 usage · 3 bad input · 4 session error · 5 backend unreachable · 130 interrupted.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__, registry
from .errors import ClslmError, InputError
from .paths import DEFAULT_SESSION

EXIT_CODES = "Exit codes: 0 ok, 1 internal error, 2 usage, 3 bad input, 4 session error (missing, corrupt, busy, mismatch), 5 backend unreachable, 130 interrupted."

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    help=f"Teach a small language model documents at inference time, then ask it from its weights alone.\n\n{EXIT_CODES}",
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)


def _check_strategy(name: str | None) -> str | None:
    if name is not None and name not in registry.names():
        raise typer.BadParameter(f"unknown strategy {name!r}; choose from: {', '.join(registry.names())}")
    return name


SessionOpt = Annotated[Path, typer.Option("--session", "-s", envvar="CLSLM_SESSION", help="Session directory.")]
StrategyOpt = Annotated[Optional[str], typer.Option("--strategy", callback=_check_strategy, help="Learning strategy for a new session (default ttt): " + ", ".join(registry.names()) + ".")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", envvar="CLSLM_MODEL", help="Model for a new session: smollm2-135m (embedded default), a .gguf file, a local HF directory or a hub id.")]
OptionsOpt = Annotated[Optional[list[str]], typer.Option("--option", "-o", metavar="KEY=VALUE", help="Strategy hyperparameter; repeatable. `clslm strategies` lists them.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]
DeviceOpt = Annotated[str, typer.Option("--device", envvar="CLSLM_DEVICE", help="auto, cpu or cuda.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", envvar="CLSLM_DTYPE", help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16 or float16.")]
def _check_wait(value: float) -> float:
    if not value >= 0:  # a negative number waited forever, NaN was an internal error
        raise typer.BadParameter(f"{value}: must be a number of seconds >= 0 (inf: as long as it takes)")
    return value


WaitOpt = Annotated[float, typer.Option("--wait", callback=_check_wait, help="Seconds to wait for a busy session (default: fail at once; inf: as long as it takes).")]


def parse_kv(items: list[str] | None) -> dict[str, str]:
    options = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"bad option {item!r}: expected KEY=VALUE")
        options[key.strip()] = value.strip()
    return options


def emit_json(data: dict) -> None:
    sys.stdout.write(json.dumps(data, default=str) + "\n")


def version_callback(value: bool) -> None:
    if value:
        out.print(f"clslm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    pass


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
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    wait: WaitOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Study documents: the strategy's learned state is saved to the session (created on first use)."""
    from .documents import read_documents
    from .progress import learn_progress
    from .session import Session

    options = parse_kv(option)
    documents = [d for p in paths for d in read_documents(p, text_field=text_field, password=password, max_bytes=max_bytes)]
    with Session.open_or_create(session, model=model, strategy=strategy, options=options, device=device, dtype=dtype, wait=wait) as s:
        _check_tokens(s, documents, max_tokens)
        with learn_progress(err, quiet=False) as (on_step, on_document):
            reports = s.learn(documents, on_step=on_step, on_document=on_document)
        result = {"session": str(s.path), "strategy": s.strategy_name, "documents": [asdict(r) for r in reports], "state_bytes": s.state_bytes()}
    for r in reports:
        _warn_if_nothing_learned(r)
    if as_json:
        emit_json(result)
        return
    for r in reports:
        losses = f"loss {r.loss_before:.3f} → {r.loss_after:.3f}, " if r.loss_before is not None else ""
        out.print(f"learned [bold]{r.name}[/bold]: {r.tokens} tokens, {losses}{r.seconds:.1f} s")
    out.print(f"session {result['session']} ({result['strategy']}): state {result['state_bytes'] / 1e6:.2f} MB")


def _warn_if_nothing_learned(report) -> None:
    """A learn whose LLM replies were all unusable (ace: garbage from the server) still succeeds, as it
    learned what it could and the session is consistent; it says so on stderr instead of in silence."""
    extra = report.extra or {}
    if extra.get("invalid_replies") and not any(extra.get(k) for k in ("added", "updated")):
        err.print(f"warning: {report.name}: nothing learned; {extra['invalid_replies']} LLM replies were not usable (check -o llm_url / llm_model)", markup=False, highlight=False, soft_wrap=True)


def _check_tokens(s, documents, max_tokens: int) -> None:
    tokenizer = s.strategy().tokenizer
    for d in documents:
        n = len(tokenizer(d.text, add_special_tokens=False)["input_ids"])
        if n > max_tokens:
            raise InputError(f"{d.name}: {n} tokens, more than --max-tokens {max_tokens}")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="The question; the document is [bold]not[/bold] in the prompt.", show_default=False)],
    *,
    session: SessionOpt = DEFAULT_SESSION,
    no_deltas: Annotated[bool, typer.Option("--no-deltas", help="Answer with the learned state switched off (the base model).")] = False,
    compare_base: Annotated[bool, typer.Option("--compare-base", help="Also answer with the learned state off.")] = False,
    show_prompt: Annotated[bool, typer.Option("--show-prompt", help="Print the exact prompt the model saw.")] = False,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=4096, help="Longest answer, in tokens.")] = 64,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    wait: WaitOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Answer from the session's learned state; only the question is in the prompt (greedy decoding)."""
    from .session import Session

    with Session.open(session, device=device, dtype=dtype, wait=wait) as s:
        answer = s.ask(question, deltas=not no_deltas, max_new_tokens=max_new_tokens)
        base = s.ask(question, deltas=False, max_new_tokens=max_new_tokens) if compare_base and not no_deltas else None
        strategy, model = s.strategy_name, s.model_ref
    result = {
        "question": question,
        "answer": answer.text,
        "strategy": strategy,
        "model": model,
        "prompt_tokens": answer.prompt_tokens,
        "context_tokens": answer.context_tokens,
        "deltas": answer.deltas,
        "seconds": answer.seconds,
    }
    if base is not None:
        result["base_answer"] = base.text
    if show_prompt:
        result["prompt"] = answer.prompt
    if as_json:
        emit_json(result)
        return
    if show_prompt:
        err.rule("prompt")
        err.print(answer.prompt, markup=False, highlight=False)
        err.rule()
    label = "answer" if answer.deltas else "answer (deltas off)"
    out.print(f"[bold]{label}:[/bold] {answer.text}", highlight=False)
    if base is not None:
        out.print(f"[bold]base model:[/bold] {base.text}", highlight=False)
    err.print(f"[dim]{answer.prompt_tokens} prompt tokens ({answer.context_tokens} of added context), {answer.seconds:.2f} s[/dim]")


@app.command()
def info(*, session: SessionOpt = DEFAULT_SESSION, as_json: JsonOpt = False) -> None:
    """Show a session: model, strategy and settings, documents learned, state size."""
    from .session import Session

    data = Session.open(session).info()
    if as_json:
        emit_json(data)
        return
    out.print(f"session   {data['session']}")
    out.print(f"model     {data['model']['ref']} ({data['model']['kind']}, {data['model']['fingerprint'][:12]})")
    out.print(f"strategy  {data['strategy']['name']}  " + " ".join(f"{k}={v}" for k, v in data["strategy"]["config"].items()))
    out.print(f"state     {data['state_bytes'] / 1e6:.2f} MB")
    table = Table("document", "tokens", "loss before → after", "seconds", "learned at", box=None)
    for d in data["documents"]:
        before, after = d.get("loss_before"), d.get("loss_after")
        loss = "-" if before is None and after is None else " → ".join("-" if x is None else f"{x:.3f}" for x in (before, after))
        table.add_row(d["name"], str(d["tokens"]), loss, f"{d['seconds']:.1f}", d.get("learned_at", ""))
    out.print(table if data["documents"] else "documents none yet")


@app.command()
def reset(
    *,
    session: SessionOpt = DEFAULT_SESSION,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    wait: WaitOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Forget everything learned; keep the session's model and strategy settings."""
    from .session import Session

    with Session.open(session, wait=wait) as s:
        count = len(s.documents)
        declined = not yes and not _confirm(f"Forget the {count} document(s) learned in {s.path}? [y/N]: ")
        if not declined:
            s.reset()
    if as_json:
        emit_json({"session": str(session), "forgotten_documents": 0, "declined": True} if declined else {"session": str(session), "forgotten_documents": count})
    elif declined:
        out.print(f"reset {session}: declined, nothing forgotten")
    else:
        out.print(f"reset {session}: forgot {count} document(s)")


def _confirm(prompt: str) -> bool:
    """Ask on stderr (stdout carries only the result, one JSON object with --json); no answer or end of input
    is no. Declining is not an error: exit 0, the session unchanged."""
    err.print(prompt, end="", markup=False, highlight=False)
    answer = sys.stdin.readline() if sys.stdin is not None else ""
    if not answer.endswith("\n"):
        err.print()
    return answer.strip().lower() in ("y", "yes")


@app.command()
def strategies(as_json: JsonOpt = False) -> None:
    """List strategies, their -o options with defaults, and their presets (-o preset=NAME)."""
    import dataclasses

    rows = []
    for name in registry.names():
        try:
            cls = registry.get(name)
        except ClslmError:
            rows.append({"name": name, "available": False, "summary": "not implemented yet", "options": {}})
            continue
        options = {f.name: f.default for f in dataclasses.fields(cls.Config)}
        presets = getattr(cls.Config, "PRESETS", {})
        rows.append({"name": name, "available": True, "summary": cls.summary, "paper": cls.paper, "options": options, "presets": presets})
    if as_json:
        emit_json({"strategies": rows})
        return
    for row in rows:
        out.print(f"[bold]{row['name']}[/bold]  {row['summary']}")
        if row["options"]:
            out.print("   " + "  ".join(f"{k}={v}" for k, v in row["options"].items()), highlight=False)
        for preset, values in row.get("presets", {}).items():
            out.print(f"   preset={preset}: " + " ".join(f"{k}={v}" for k, v in values.items()), highlight=False)


@app.command()
def interactive(
    path: Annotated[Optional[str], typer.Argument(help="Document to learn first (optional).")] = None,
    *,
    session: SessionOpt = DEFAULT_SESSION,
    strategy: StrategyOpt = None,
    model: ModelOpt = None,
    option: OptionsOpt = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest answer, in tokens.")] = 64,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """A REPL with the model loaded once: type questions; :learn PATH, :reset, :info, :quit."""
    from .interactive import run_repl
    from .models import pick_device, pick_dtype
    from .session import Session

    pick_dtype(dtype, pick_device(device))  # the model loads at the first question: check these now, not there
    with Session.open_or_create(session, model=model, strategy=strategy, options=parse_kv(option), device=device, dtype=dtype) as s:
        run_repl(s, first_document=path, console=out, errors=err, max_new_tokens=max_new_tokens)


from . import cli_bench  # noqa: E402,F401  registers `bench` and `compare` on app
from . import cli_doc2lora  # noqa: E402,F401  registers `doc2lora train` on app
from . import cli_export  # noqa: E402,F401  registers `export` on app


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors with documented exit codes (CLSLM_DEBUG=1 shows tracebacks)."""
    usage_errors, aborts = _cli_exceptions()
    try:
        code = app(args=argv, prog_name="clslm", standalone_mode=False)
    except ClslmError as e:
        _fail(str(e), e.exit_code, e)
    except (KeyboardInterrupt, *aborts) as e:
        if isinstance(e, KeyboardInterrupt) or isinstance(e.__cause__, KeyboardInterrupt):
            _interrupted()
        _fail("aborted", 1, e)
    except usage_errors as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # bare `clslm`: the help text is the answer
            e.show()
            raise SystemExit(e.exit_code) from None
        ctx = getattr(e, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        _fail(f"{e.format_message()}{hint}", e.exit_code, e)
    except Exception as e:  # a bug: still one line, unless CLSLM_DEBUG is set
        _fail(f"internal error: {type(e).__name__}: {e}", 1, e)
    if code == 130:  # Typer turns Ctrl-C into Exit(130)
        _interrupted()
    if isinstance(code, int) and code:
        raise SystemExit(code)


def _cli_exceptions() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """(usage errors, aborts): Typer >= 0.2x raises its vendored click's exceptions, older Typer click's own."""
    usage, aborts = [typer.TyperException] if hasattr(typer, "TyperException") else [], [typer.Abort]
    try:
        import click
    except ImportError:
        pass
    else:
        usage.append(click.ClickException)
        aborts.append(click.exceptions.Abort)
    return tuple(usage), tuple(aborts)


def _interrupted() -> None:
    err.print("interrupted; the session is unchanged")
    raise SystemExit(130) from None


def _fail(message: str, code: int, error: BaseException) -> None:
    if os.environ.get("CLSLM_DEBUG"):
        raise error
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise SystemExit(code) from None
