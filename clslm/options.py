"""KEY=VALUE strings → a dict: the CLI's `-o KEY=VALUE` and a compare variant's `NAME[KEY=VALUE,...]`."""

from __future__ import annotations

from collections.abc import Iterable

from .errors import InputError


def parse_key_values(items: Iterable[str] | None, *, context: str = "") -> dict[str, str]:
    """{key: value} with both sides stripped; an item with no `=` or no key is an InputError (prefixed
    with `context`, e.g. "strategy 'ttt[x]'"). A later key replaces an earlier one."""
    options: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            prefix = f"{context}: " if context else ""
            raise InputError(f"{prefix}bad option {item!r}: expected KEY=VALUE")
        options[key.strip()] = value.strip()
    return options
