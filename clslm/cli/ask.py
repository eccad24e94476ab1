"""`clslm ask` and `clslm interactive`: answers from what a session learned."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..options import parse_key_values
from ..paths import DEFAULT_SESSION
from .app import DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, OptionsOpt, SessionOpt, StrategyOpt, WaitOpt, app
from .output import emit_json, err, out


@app.command()
def ask(
    questions: Annotated[list[str], typer.Argument(help="The question (several: each answered in turn, the model loaded once); with ttt, ttt-linear, doc2lora and jitrl-full the document is [bold]not[/bold] in the prompt.", show_default=False)],
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
    """Answer from the session's learned state.

    ttt, ttt-linear, doc2lora and jitrl-full keep the document out of the prompt: only the question is in it.
    jitrl-mvp puts retrieved document chunks in the prompt, ace its playbook bullets; `--json` counts what
    was added in context_tokens, and --show-prompt prints the exact prompt. With several questions, `--json`
    writes one JSON object per line, one per question, in order.
    """
    from ..errors import InputError
    from ..session import Session

    if any(not q.strip() for q in questions):  # before any answer, not after some
        raise InputError("the question is empty" if len(questions) == 1 else "one of the questions is empty")
    with Session.open(session, device=device, dtype=dtype, wait=wait) as s:
        if not s.documents and not no_deltas:
            err.line(f"note: nothing learned in {s.path} yet: this is the base model's answer (`clslm learn PATH` first)")
        for question in questions:
            answer = s.ask(question, deltas=not no_deltas, max_new_tokens=max_new_tokens)
            base = s.ask(question, deltas=False, max_new_tokens=max_new_tokens) if compare_base and not no_deltas else None
            _show(question, answer, base, s.strategy_name, s.model_ref, show_prompt=show_prompt, as_json=as_json, heading=len(questions) > 1)


def _show(question: str, answer, base, strategy: str, model: str, *, show_prompt: bool, as_json: bool, heading: bool) -> None:
    """One question's answer: a JSON line, or the answer (and the base model's) on stdout, costs on stderr."""
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
    if heading:
        out.print(f"[bold]question:[/bold] {question}", highlight=False)
    if show_prompt:
        err.heading("prompt")
        err.line(answer.prompt)
        err.heading("")
    label = "answer" if answer.deltas else "answer (deltas off)"
    out.print(f"[bold]{label}:[/bold] {answer.text}", highlight=False)
    if base is not None:
        out.print(f"[bold]base model:[/bold] {base.text}", highlight=False)
    err.print(f"[dim]{answer.prompt_tokens} prompt tokens ({answer.context_tokens} of added context), {answer.seconds:.2f} s[/dim]")


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
    from ..models import pick_device, pick_dtype
    from ..session import Session
    from .repl import run_repl

    pick_dtype(dtype, pick_device(device))  # the model loads at the first question: check these now, not there
    with Session.open_or_create(session, model=model, strategy=strategy, options=parse_key_values(option), device=device, dtype=dtype) as s:
        run_repl(s, first_document=path, console=out, errors=err, max_new_tokens=max_new_tokens)
