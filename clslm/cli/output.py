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


def document_lines(documents: list[dict], losses: bool = False) -> list[str]:
    """A header and one line per document, its full name last so that no width ever cuts it."""
    widths = {"hash": 12, "tokens": 7, "size": 14, **({"loss before → after": 19} if losses else {}), "seconds": 7, "learned at": 25}
    lines = [_cells(widths, {k: k for k in widths}) + "  document"]
    for d in documents:
        cells = {
            "hash": d.get("sha256", "")[:12] or "-",
            "tokens": str(d["tokens"]),
            "size": "-" if d.get("characters") is None else f"{d['characters']:,} chars",
            "loss before → after": _losses(d),
            "seconds": f"{d['seconds']:.1f}",
            "learned at": d.get("learned_at") or "-",
        }
        lines.append(_cells(widths, cells) + f"  {d['name']}")
    return lines


def _cells(widths: dict[str, int], cells: dict[str, str]) -> str:
    return "  ".join(f"{cells[k]:<{w}}" for k, w in widths.items())


def _losses(d: dict) -> str:
    before, after = d.get("loss_before"), d.get("loss_after")
    return "-" if before is None and after is None else " → ".join("-" if x is None else f"{x:.3f}" for x in (before, after))
