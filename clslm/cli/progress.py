"""The one progress reporter of the CLI (learn, bench, compare, doc2lora train), on stderr.

On a terminal: a rich bar per phase. In a pipe or a log: a plain line per phase when it starts and ends,
and in between every few percent or every few seconds — "phase: i/total (p%), elapsed 0:12, ETA 0:40".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rich.console import Console

LINE_EVERY_SECONDS = 30.0  # in a log, a line at least this often while a phase runs ...
LINE_EVERY_FRACTION = 0.1  # ... and at every tenth of the phase, but ...
LINE_AT_MOST_SECONDS = 2.0  # ... not more often than this (tiny steps would flood the log)


def clock(seconds: float) -> str:
    """0:07, 12:30, 1:02:03."""
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class _Phase:
    started: float
    first_done: int
    last_line: float
    last_fraction: float = -1.0
    task: int | None = None
    finished: bool = False
    detail: str = field(default="")


class Reporter:
    """`reporter.update(phase, done, total, detail)`; use as a context manager around the work."""

    def __init__(self, console: Console, *, transient: bool = False, enabled: bool = True):
        self.console, self.enabled = console, enabled
        self.live = enabled and console.is_terminal
        self.phases: dict[str, _Phase] = {}
        self.bars = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=transient, disable=not self.live,
        )  # fmt: skip

    def __enter__(self) -> "Reporter":
        self.bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.__exit__(*exc)

    def update(self, phase: str, done: int, total: int | None, detail: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        state = self.phases.get(phase)
        if state is None:
            state = self.phases[phase] = _Phase(started=now, first_done=done, last_line=now)
            if self.live:
                state.task = self.bars.add_task(phase, total=total or None, detail=detail)
        if self.live:
            self.bars.update(state.task, completed=done, total=total or None, detail=detail)
        elif self._line_due(state, done, total, now):
            self.console.print(self._line(phase, state, done, total, detail, now), markup=False, highlight=False, soft_wrap=True)

    def _line_due(self, state: _Phase, done: int, total: int | None, now: float) -> bool:
        """First and last update of a phase, then every tenth of it or every LINE_EVERY_SECONDS."""
        if state.finished:
            return False
        fraction = done / total if total else 0.0
        last = total is not None and total > 0 and done >= total
        due = state.last_fraction < 0 or last or now - state.last_line >= LINE_EVERY_SECONDS
        due |= fraction - state.last_fraction >= LINE_EVERY_FRACTION and now - state.last_line >= LINE_AT_MOST_SECONDS
        if due:
            state.last_line, state.last_fraction, state.finished = now, fraction, last
        return due

    def _line(self, phase: str, state: _Phase, done: int, total: int | None, detail: str, now: float) -> str:
        elapsed = now - state.started
        parts = [f"{phase}: {done}/{total} ({100 * done / total:.0f}%)" if total else f"{phase}: {done}"]
        parts.append(f"elapsed {clock(elapsed)}")
        rate_done = done - state.first_done
        if total and 0 < rate_done and done < total:
            parts.append(f"ETA {clock(elapsed / rate_done * (total - done))}")
        if detail:
            parts.append(detail)
        return ", ".join(parts)

    # ---- adapters for the library's callbacks ------------------------------------------------------
    def learner(self):
        """(on_step, on_document) for Session.learn: one phase per document, the loss as its detail."""
        current = {"phase": "learning"}

        def on_document(document) -> None:
            current["phase"] = f"learning {document.name}"

        def on_step(step) -> None:
            loss = f"loss {step.loss:.3f}" if step.loss is not None else "loss -"
            self.update(current["phase"], step.i, step.total, loss)

        return on_step, on_document
