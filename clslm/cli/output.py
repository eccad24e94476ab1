"""Where the CLI writes: the result on stdout, everything else (progress, notes, prompts) on stderr.

On a terminal rich fits lines to its width. In a pipe or a log rich would wrap every line at 80 columns
(an "exact prompt" broken inside a name, "729.5\\ns"): there each print is one unwrapped line.
"""

from __future__ import annotations

import json
import sys

from rich.console import Console, ConsoleDimensions

UNWRAPPED = 100_000  # the width tables and lines may take when nothing wraps them


class Output(Console):
    """A rich Console that prints plain, unwrapped lines when its stream is not a terminal."""

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        return size if self.is_terminal else ConsoleDimensions(UNWRAPPED, size.height)

    @size.setter
    def size(self, value) -> None:
        Console.size.fset(self, value)

    def print(self, *objects, **kwargs) -> None:
        if not self.is_terminal:
            kwargs.setdefault("soft_wrap", True)
        super().print(*objects, **kwargs)

    def line(self, text: str) -> None:
        """`text` exactly as it is: no markup, no highlighting, never wrapped."""
        self.print(text, markup=False, highlight=False, soft_wrap=True)

    def heading(self, title: str) -> None:
        """A rule on a terminal; a plain `--- title ---` line in a pipe."""
        if self.is_terminal:
            self.rule(title)
        else:
            self.line(f"--- {title} ---" if title else "---")


out = Output()
err = Output(stderr=True)


def emit_json(data: dict) -> None:
    """Exactly one JSON object, one line, on stdout."""
    sys.stdout.write(json.dumps(data, default=str) + "\n")


def count(n: int, word: str) -> str:
    """'1 document', '3 documents'."""
    return f"{n} {word}{'' if n == 1 else 's'}"
