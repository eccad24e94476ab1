"""The CLI as a package: one app module, a module per command group, no import cycle, one KEY=VALUE parser."""

from __future__ import annotations

import pytest

from clslm.errors import InputError
from clslm.options import parse_key_values

from helpers import PACKAGE, graph


def test_the_cli_package_has_no_import_cycle():
    edges = {m: {t for t in targets if t.startswith("clslm.cli")} for m, targets in graph().items() if m.startswith("clslm.cli")}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in edges.get(module, ()):
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " → ".join([*path, module, target]))
            if target not in state:
                visit(target, [*path, module])
        state[module] = "done"

    for module in edges:
        if module not in state:
            visit(module, [])


def test_nothing_outside_the_cli_imports_it():
    """The library (bench included) never imports the command line; only `python -m clslm` does."""
    users = {m for m, targets in graph().items() if not m.startswith("clslm.cli") and any(t.startswith("clslm.cli") for t in targets)}
    assert users == {"clslm.__main__"}


def test_command_modules_import_only_the_app_side():
    """Command modules register on app.py's app; none imports main.py or another command module."""
    commands = {"learn", "ask", "show", "bench", "export", "doc2lora"}
    shared = {"clslm.cli.app", "clslm.cli.output", "clslm.cli.progress", "clslm.cli.repl", "clslm.cli.estimate", "clslm.cli.listing"}
    for name in commands:
        targets = {t for t in graph()[f"clslm.cli.{name}"] if t.startswith("clslm.cli")}
        assert targets <= shared, (name, targets - shared)


def test_one_key_value_parser():
    assert parse_key_values(["a=1", " b = x=y ", "a=2"]) == {"a": "2", "b": "x=y"}
    assert parse_key_values(None) == {}
    with pytest.raises(InputError, match="bad option 'epochs': expected KEY=VALUE"):
        parse_key_values(["epochs"])
    with pytest.raises(InputError, match=r"^strategy 'ttt\[=1\]': bad option '=1'"):
        parse_key_values(["=1"], context="strategy 'ttt[=1]'")
    from clslm.bench import variant

    assert variant("ttt[neurons=0, questions=0]") == ("ttt", {"neurons": "0", "questions": "0"})
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        variant("ttt[neurons]")
    sources = [p for p in PACKAGE.rglob("*.py") if '.partition("=")' in p.read_text(encoding="utf-8")]
    assert sources == [PACKAGE / "options.py"]
