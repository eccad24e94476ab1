"""`main()`: runs the app with every command registered; the one place errors become exit codes.

Exit codes: 0 ok · 1 internal error · 2 usage · 3 bad input · 4 session error · 5 backend unreachable · 130 interrupted.
"""

from __future__ import annotations

import os

import typer

from ..errors import ClslmError
from .app import app
from .output import err

# Each module registers its commands on `app`; this order is the order of `clslm --help`.
from . import learn, ask, show, bench, doc2lora, export  # noqa: E402,F401,I001


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
