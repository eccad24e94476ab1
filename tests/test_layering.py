"""The layers of clslm/: strategies stand alone (no CLI, no bench, no other strategy), and no import cycle.

A strategy is a module or package the registry names (clslm/registry.py BUILTIN) with the modules that are
its own parts; the shared parts of strategies (base, router, tfidf, anatomy, textbook, …) import no strategy.
"""

from __future__ import annotations

import pytest

from clslm import registry

from helpers import PACKAGE, graph, imports, module_name

# The CLI and the benchmark runners and reports; benchdata.py (the facts-set file format, which doc2lora's
# trainer reads too) is data, not bench code.
OUTWARD = ("clslm.cli", "clslm.bench", "clslm.bench_results", "clslm.bench_report")
# Modules outside a strategy's package that are its own (only it imports them).
OWN_PARTS = {"clslm.strategies.ttt_export": "clslm.strategies.ttt", "clslm.strategies.ttt_state": "clslm.strategies.ttt"}


def strategy_modules() -> set[str]:
    return {target.partition(":")[0] for target in registry.BUILTIN.values()}


def owner(module: str, strategies: set[str]) -> str | None:
    """The strategy `module` belongs to (itself, a module of its package, or one of OWN_PARTS), else None."""
    module = OWN_PARTS.get(module, module)
    return next((s for s in strategies if module == s or module.startswith(s + ".")), None)


def test_no_strategy_imports_the_cli_bench_or_another_strategy():
    strategies = strategy_modules()
    assert "clslm.strategies.ttt" in strategies and "clslm.strategies.doc2lora" in strategies
    problems = []
    for module, targets in graph().items():
        mine = owner(module, strategies)
        if not module.startswith("clslm.strategies"):
            continue
        for target in targets:
            theirs = owner(target, strategies)
            if any(target == o or target.startswith(o + ".") for o in OUTWARD):
                problems.append(f"{module} imports {target}")
            elif theirs and theirs != mine:
                problems.append(f"{module} imports {target} (strategy {theirs})" if mine else f"shared part {module} imports strategy {theirs}")
    assert not problems, "\n".join(problems)


def top_level_graph() -> dict[str, set[str]]:
    """Imports at module level only (what runs at import time; imports inside functions cannot cycle)."""
    import ast

    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])
        edges[name] = {m for m in imports(path, tree=top) if m in modules}
    return edges


def test_no_import_cycle():
    edges = top_level_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges.get(module, ())):
            if state.get(target) == "open":
                pytest.fail("import cycle: " + " → ".join([*path, module, target]))
            if target not in state:
                visit(target, [*path, module])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [])


def test_docs_architecture_names_every_module():
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [str(p.relative_to(PACKAGE.parent)) for p in sorted(PACKAGE.rglob("*.py")) if f"`{p.relative_to(PACKAGE.parent)}`" not in text]
    assert not missing, f"docs/architecture.md has no line for {missing}"


# Strategies write no file of their own: a cache goes through the context the Session gives
# (strategies/context.py). doc2lora's trainer writes its outputs where `clslm doc2lora train --out` says: a
# command's output, not a strategy's state in a session.
WRITERS = {"clslm.strategies.context", "clslm.strategies.doc2lora.checkpoint", "clslm.strategies.doc2lora.train"}


def test_strategies_write_files_only_through_their_context():
    problems = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        if module.startswith("clslm.strategies")
        for target in targets & {"clslm.paths", "clslm.atomic", "clslm.session"}
        if not (target == "clslm.atomic" and module in WRITERS)
    ]
    assert not problems, "\n".join(problems)


def test_the_context_caches_under_the_directory_it_is_given(tmp_path):
    from clslm.strategies.context import StrategyContext

    calls = []

    def compute():
        calls.append(1)
        return "value"

    def cached(context, name="calibration/key.txt"):
        return context.cached(name, compute, load=lambda p: p.read_text(), save=lambda v, tmp: tmp.write_text(v))

    assert cached(StrategyContext("fp")) == "value" and not any(tmp_path.iterdir())  # no directory: nothing kept
    context = StrategyContext("fp", cache_dir=tmp_path)
    assert cached(context) == cached(context) == "value" and len(calls) == 2  # the second read the file
    assert (tmp_path / "calibration" / "key.txt").read_text() == "value"
    for name in ["", "/etc/x", "../x", "a/../../x", "a\\..\\x"]:
        with pytest.raises(ValueError):
            cached(context, name)


def test_state_files_names_no_strategy():
    """Each strategy checks its own saved layout (Strategy.check_extra_state / check_state_dict)."""
    assert not {t for t in graph()["clslm.state_files"] if t.startswith("clslm.strategies")}
