"""Helpers the test files share: a model loaded as a user's session loads it, the CLI run in-process, the
package's import graph, a doc2lora hypernetwork meta-trained for a tiny model."""

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


TINY_HYPERNET = dict(width=16, rank=4, blocks=1, val_docs=2, eval_every=2, chunk_tokens=64, lr=3e-3, warmup=2)


def doc2lora_trainer(model_dir, out: Path, **settings):
    """doc2lora's meta-trainer for a local model, with a tiny hypernetwork (TINY_HYPERNET, overridden by `settings`)."""
    from clslm.strategies.doc2lora.train import Trainer, TrainSettings

    model, tokenizer, source = load(model_dir)
    return Trainer(model, tokenizer, TrainSettings(**(TINY_HYPERNET | settings)), out, fingerprint=source.fingerprint, cpu=True)


def meta_trained_hypernet(model_dir, tmp_path_factory, **settings) -> Path:
    """A hypernetwork meta-trained for 4 steps (B's head is no longer zero), its caches in a home of its own."""
    import pytest

    out = tmp_path_factory.mktemp("hypernet")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLSLM_HOME", str(tmp_path_factory.mktemp("home")))
        t = doc2lora_trainer(model_dir, out, steps=4, **settings)
        t.build(resume=False)
        t.run()
    return out / "hypernet.safetensors"


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
