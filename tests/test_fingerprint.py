"""A GGUF model's fingerprint (its sha256) is hashed once per file version, not at every command's start."""

from __future__ import annotations

import hashlib
import os

from clslm import models


def test_a_gguf_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 1000)
    hashed = []
    real = models.file_sha256
    monkeypatch.setattr(models, "file_sha256", lambda path: hashed.append(path) or real(path))

    first = models.resolve_model(str(gguf)).fingerprint
    assert first == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert models.resolve_model(str(gguf)).fingerprint == first and len(hashed) == 1  # remembered

    gguf.write_bytes(b"GGUF" + b"\1" * 1000)  # same size, new content and time
    os.utime(gguf, ns=(gguf.stat().st_atime_ns, gguf.stat().st_mtime_ns + 1_000_000))
    assert models.resolve_model(str(gguf)).fingerprint == hashlib.sha256(gguf.read_bytes()).hexdigest() != first
    assert len(hashed) == 2


def test_a_damaged_memo_is_hashed_again(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\2" * 100)
    memo = models.clslm_home() / "models" / "fingerprints.json"
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text("{not json")
    assert models.resolve_model(str(gguf)).fingerprint == hashlib.sha256(gguf.read_bytes()).hexdigest()
    memo.write_text('{"%s": {"stamp": "x", "sha256": "0"}}' % gguf.resolve())
    assert models.resolve_model(str(gguf)).fingerprint == hashlib.sha256(gguf.read_bytes()).hexdigest()
