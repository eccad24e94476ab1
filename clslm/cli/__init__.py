"""The `clslm` command line: a thin Typer layer over Session (no torch import until a command needs it).

app.py holds the Typer app and the shared options; each command group registers on it from its own
module (learn.py, ask.py, show.py, bench.py, export.py, doc2lora.py); main.py imports them all and is the
one error funnel. Output goes through output.py, progress through progress.py.
"""

from .main import main

__all__ = ["main"]
