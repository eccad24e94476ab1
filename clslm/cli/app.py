"""The Typer app every command module registers on, and the options they share. Imports no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import __version__, registry
from .output import out

EXIT_CODES = "Exit codes: 0 ok, 1 internal error, 2 usage, 3 bad input, 4 session error (missing, corrupt, busy, mismatch), 5 backend unreachable, 130 interrupted."

def _no_type_after_flags() -> None:
    """Typer 0.2x prints `<bool>` after every flag in --help (`--json <bool>`), as if it took a value."""
    from typer.core import TyperOption

    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is not None and not getattr(shown, "flags_untyped", False):
        def display_type_rich(self, ctx):
            return None if self.is_flag else shown(self, ctx)

        display_type_rich.flags_untyped = True
        TyperOption.display_type_rich = display_type_rich


_no_type_after_flags()
app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    help=f"Teach a small language model documents at inference time, then ask it from its weights alone.\n\n{EXIT_CODES}",
    pretty_exceptions_enable=False,
)


def check_strategy(name: str | None) -> str | None:
    if name is not None and name not in registry.names():
        raise typer.BadParameter(f"unknown strategy {name!r}; choose from: {', '.join(registry.names())}")
    return name


def check_wait(value: float) -> float:
    if not value >= 0:  # a negative number waited forever, NaN was an internal error
        raise typer.BadParameter(f"{value}: must be a number of seconds >= 0 (inf: as long as it takes)")
    return value


SessionOpt = Annotated[Path, typer.Option("--session", "-s", envvar="CLSLM_SESSION", help="Session directory.")]
StrategyOpt = Annotated[Optional[str], typer.Option("--strategy", callback=check_strategy, help="Learning strategy for a new session (default ttt): " + ", ".join(registry.names()) + ".")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", envvar="CLSLM_MODEL", help="Model for a new session: smollm2-135m (embedded default), a .gguf file, a local HF directory or a hub id.")]
OptionsOpt = Annotated[Optional[list[str]], typer.Option("--option", "-o", metavar="KEY=VALUE", help="Strategy hyperparameter; repeatable. `clslm strategies NAME` lists them.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]
DeviceOpt = Annotated[str, typer.Option("--device", envvar="CLSLM_DEVICE", help="auto, cpu or cuda.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", envvar="CLSLM_DTYPE", help="auto (fp32 on CPU, bf16 on CUDA), float32, bfloat16 or float16.")]
WaitOpt = Annotated[float, typer.Option("--wait", callback=check_wait, help="Seconds to wait for a busy session (default: fail at once; inf: as long as it takes).")]


def version_callback(value: bool) -> None:
    if value:
        out.print(f"clslm {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    pass
