"""One document's share of a strategy's state, for Strategy.forget (`clslm forget`).

Strategies that keep items per document in learn order (ttt's parts, jitrl-mvp's chunks, jitrl-full's
stored rows) find a document's items from how many each document added.
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from ..state_files import is_int


def cannot(strategy: str, why: str) -> InputError:
    return InputError(f"{strategy}: cannot tell this document's share of the session's state ({why}); `clslm reset` forgets every document")


def share(counts: list[int], position: int) -> range:
    """Indices of document `position`'s items, when document i added counts[i] items, in learn order."""
    start = sum(counts[:position])
    return range(start, start + counts[position])


def reported_counts(strategy: str, documents: list[dict[str, Any]], key: str, held: int, default: int | None = None) -> list[int]:
    """Each document's count from its learn report's extra[key]; InputError unless they add up to `held`."""
    counts = [(d.get("extra") or {}).get(key, default) for d in documents]
    if not all(is_int(c) and c >= 0 for c in counts) or sum(counts) != held:
        raise cannot(strategy, f"its documents' reported {key} do not add up to the {held} it holds")
    return counts


def drop_front(counts: list[int], n: int) -> list[int]:
    """The counts after the oldest `n` items went (a bounded store drops from the front)."""
    counts = list(counts)
    for i, count in enumerate(counts):  # a document whose rows all went keeps its place, with 0
        taken = min(n, count)
        counts[i], n = count - taken, n - taken
    return counts


def reported_rows(strategy: str, documents: list[dict[str, Any]]) -> list[int]:
    """Rows per document in a bounded store saved without them, from the learn reports (rows added, then
    the oldest `dropped`)."""
    rows: list[int] = []
    for d in documents:
        extra = d.get("extra") or {}
        if not (is_int(extra.get("rows")) and is_int(extra.get("dropped", 0))):
            raise cannot(strategy, "its learn reports do not say how many rows each document stored")
        rows = drop_front([*rows, extra["rows"]], extra.get("dropped", 0))
    return rows
