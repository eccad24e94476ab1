"""The session manifest (session.json): read it, check the type of every field, upgrade old formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import SessionCorrupt, SessionError

FORMAT_VERSION = 1


def upgrade(manifest: Any, where: Path) -> dict[str, Any]:
    """Check a manifest's shape and bring older format versions up to FORMAT_VERSION."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("format_version"), int):
        raise SessionCorrupt(f"{where}: corrupt manifest (no format_version)")
    version = manifest["format_version"]
    if version > FORMAT_VERSION:
        raise SessionCorrupt(f"{where}: made by a newer clslm (format {version}); upgrade clslm")
    for key in ("model", "strategy", "state", "documents"):
        if key not in manifest:
            raise SessionCorrupt(f"{where}: corrupt manifest (missing {key!r})")
    problem = _shape_problem(manifest)
    if problem:
        raise SessionCorrupt(f"{where}: corrupt manifest ({problem})")
    return manifest


def _shape_problem(manifest: dict[str, Any]) -> str | None:
    """What is wrong with the types of a manifest's fields, if anything (so no KeyError surfaces later)."""
    model, strategy, state = manifest["model"], manifest["strategy"], manifest["state"]
    if not (isinstance(model, dict) and all(isinstance(model.get(k), str) for k in ("ref", "kind", "fingerprint"))):
        return "'model' needs string ref, kind and fingerprint"
    if not (isinstance(strategy, dict) and isinstance(strategy.get("name"), str) and isinstance(strategy.get("config"), dict)):
        return "'strategy' needs a string name and a config object"
    if not (isinstance(state, dict) and set(state) == {"tensors", "extra"}):
        return "'state' needs exactly tensors and extra"
    for entry in state.values():
        if entry is not None and not _is_blob_entry(entry):
            return "a state entry needs a plain file name, bytes and sha256"
    if not (isinstance(manifest["documents"], list) and all(map(_is_document_entry, manifest["documents"]))):
        return "'documents' must be a list of {name, tokens, seconds, ...} objects"
    return None


def _is_document_entry(entry: Any) -> bool:
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)):
        return False
    losses = [entry.get(k) for k in ("loss_before", "loss_after")]
    return number(entry.get("tokens")) and number(entry.get("seconds")) and all(x is None or number(x) for x in losses)


def _is_blob_entry(entry: Any) -> bool:
    """{file, bytes, sha256} naming a file inside the session: no directories, '..' or NUL."""
    if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("sha256"), str)):
        return False
    name = entry["file"]
    plain = name not in ("", ".", "..") and "\x00" not in name and Path(name).name == name and "\\" not in name
    return plain and isinstance(entry.get("bytes"), int) and not isinstance(entry["bytes"], bool)


def read_manifest(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SessionCorrupt(f"{path}: corrupt manifest ({e})") from None
    except OSError as e:
        raise SessionCorrupt(f"{path}: cannot read manifest ({e.strerror or e})") from None


def read_committed(path: Path, default: dict[str, Any]) -> dict[str, Any]:
    """The manifest on disk (the committed session), or `default` when there is none or it does not load."""
    try:
        return upgrade(read_manifest(path), path)
    except SessionError:
        return default
