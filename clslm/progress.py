"""Progress on stderr while learning (rich), silent when stderr is not a terminal or in tests."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@contextmanager
def learn_progress(console: Console, quiet: bool = False):
    """Yields (on_step, on_document) callbacks that draw one bar per document."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    )
    state = {"task": None}

    def on_document(document) -> None:
        state["task"] = progress.add_task(f"learning {document.name}", total=None, loss="-")

    def on_step(step) -> None:
        if state["task"] is None:
            state["task"] = progress.add_task("learning", total=None, loss="-")
        loss = f"{step.loss:.3f}" if step.loss is not None else "-"
        progress.update(state["task"], completed=step.i, total=step.total, loss=loss)

    with progress:
        yield on_step, on_document
