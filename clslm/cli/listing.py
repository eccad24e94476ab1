"""The rows of `clslm strategies`: name, summary, paper, -o options with defaults, their help and bounds, presets.

Reading them from the built-in strategies means importing their modules, and so torch (seconds). They are
kept in $CLSLM_HOME/strategies-<key>.json, the key a hash of clslm's version and of the strategy sources'
sizes and times, so after the first listing `clslm strategies` imports no torch. Strategies from plugins
or register() are read from their classes every time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from .. import __version__, registry
from ..atomic import write_json_atomic
from ..errors import ClslmError
from ..paths import clslm_home

SOURCES = Path(__file__).resolve().parent.parent / "strategies"


def strategy_rows() -> list[dict[str, Any]]:
    builtin = _builtin_rows()
    return [builtin.get(name) or read_row(name) for name in registry.names()]


def read_row(name: str) -> dict[str, Any]:
    """A strategy's row, from its class (imports it)."""
    try:
        cls = registry.get(name)
    except ClslmError:
        return {"name": name, "available": False, "summary": "not implemented yet", "options": {}}
    from ..strategies.config import option_help

    options = {f.name: f.default for f in dataclasses.fields(cls.Config)}
    presets = getattr(cls.Config, "PRESETS", {})
    row = {"name": name, "available": True, "summary": cls.summary, "paper": cls.paper, "options": options, "presets": presets}
    return row | {"help": option_help(cls.Config)}


def sources_key() -> str:
    """Changes whenever clslm's version or any strategy source file does."""
    digest = hashlib.sha256(__version__.encode())
    for path in sorted(SOURCES.rglob("*.py")):
        stat = path.stat()
        digest.update(f"{path.relative_to(SOURCES)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _builtin_rows() -> dict[str, dict[str, Any]]:
    names = [n for n in registry.names() if n in registry.BUILTIN]
    path = clslm_home() / f"strategies-{sources_key()}.json"
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(rows, dict) and set(rows) == set(names):
            return rows
    except (OSError, ValueError):
        pass
    rows = {name: read_row(name) for name in names}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, rows)
        for old in path.parent.glob("strategies-*.json"):
            if old != path:
                old.unlink(missing_ok=True)
    except (OSError, TypeError, ValueError):  # a cache: listing works without it
        pass
    return rows
