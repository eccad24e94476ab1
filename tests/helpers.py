"""Helpers the test files share: a model loaded as a user's session loads it, the CLI run in-process, the
package's import graph."""

from __future__ import annotations

import ast
import io
import json
from pathlib import Path

from clslm.cli.main import main
from clslm.models import load_model, resolve_model


def load(model_dir, dtype: str = "float32"):
    """(model, tokenizer, source) of a local model dir, on the CPU, as `clslm --model DIR` loads it."""
    source = resolve_model(str(model_dir))
    return (*load_model(source, device="cpu", dtype=dtype), source)


def run(capfd, *args, stdin: bytes | str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    """main(args) → (exit code, stdout, stderr)."""
    if stdin is not None:
        data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capfd.readouterr()
    return code, out, err


def run_json(capfd, *args, **kw) -> dict:
    """`clslm ARGS --json`: exit 0 and exactly one JSON object on stdout."""
    code, out, err = run(capfd, *args, "--json", **kw)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"--json prints exactly one JSON object on stdout, got: {out!r}"
    return json.loads(lines[0])


# ---- the import graph of clslm/ (layering tests) ---------------------------------------------------------

PACKAGE = Path(__file__).resolve().parents[1] / "clslm"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, tree: ast.AST | None = None) -> set[str]:
    """clslm modules `path` imports (module level and inside functions), resolved to absolute names."""
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(tree or ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("clslm")}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if node.level and not node.module:  # from . import a, b: each is a module
                found |= {f"{target}.{a.name}" for a in node.names}
            elif target.startswith("clslm"):
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules} for name, path in modules.items()}
