"""No code path unpickles: sessions, caches and checkpoints are safetensors and JSON only."""

from __future__ import annotations

import re
from pathlib import Path

import clslm

SOURCE = sorted(Path(clslm.__file__).parent.rglob("*.py"))
UNSAFE = [
    (re.compile(r"^\s*(import|from)\s+(c?pickle|dill|joblib|shelve)\b", re.M), "imports a pickle-based module"),
    (re.compile(r"\btorch\.load\((?![^)]*weights_only\s*=\s*True)"), "torch.load without weights_only=True"),
    (re.compile(r"\b(np|numpy)\.load\([^)]*allow_pickle\s*=\s*True"), "numpy.load with allow_pickle=True"),
]


def offences(text: str) -> list[str]:
    return [why for pattern, why in UNSAFE if pattern.search(text)]


def test_the_scan_catches_what_it_looks_for():
    assert offences("import pickle\n") and offences("x = torch.load(path)") and offences("np.load(f, allow_pickle=True)")
    assert not offences("torch.load(path, weights_only=True)") and not offences("from safetensors.torch import load_file")


def test_no_source_file_unpickles():
    assert len(SOURCE) > 10
    found = {str(p.relative_to(Path(clslm.__file__).parent)): offences(p.read_text(encoding="utf-8")) for p in SOURCE}
    assert not {k: v for k, v in found.items() if v}
