"""The session manifest (session.json): read it within limits, check every field's type and bounds, upgrade
old formats. What does not fit is SessionCorrupt (exit 4), one line naming the file and the field."""

from __future__ import annotations

import math
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .errors import InputError, SessionCorrupt, SessionError
from .state_files import MAX_MANIFEST_BYTES, MAX_STATE_BYTES, is_int, load_json

FORMAT_VERSION = 1
# Content-named state files (session.py, _write_blob): deltas-/state- and 16 hex digits of the sha256.
STATE_FILE = {"tensors": re.compile(r"deltas-([0-9a-f]{16})\.safetensors"), "extra": re.compile(r"state-([0-9a-f]{16})\.json")}
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_COUNT = 10**15  # tokens of one document; a bound so that no later arithmetic meets an absurd integer


class _Problem(Exception):
    pass


def upgrade(manifest: Any, where: Path) -> dict[str, Any]:
    """Check a manifest's shape and bring older format versions up to FORMAT_VERSION."""
    if not isinstance(manifest, dict) or "format_version" not in manifest:
        raise SessionCorrupt(f"{where}: corrupt manifest (no format_version)")
    version = manifest["format_version"]
    if not is_int(version) or version < 1:
        raise SessionCorrupt(f"{where}: corrupt manifest (format_version must be a whole number from 1, not {version!r})")
    if version > FORMAT_VERSION:
        raise SessionCorrupt(f"{where}: made by a newer clslm (format {version}); upgrade clslm")
    for key in ("model", "strategy", "state", "documents"):
        if key not in manifest:
            raise SessionCorrupt(f"{where}: corrupt manifest (missing {key!r})")
    try:
        _check(manifest)
    except _Problem as e:
        raise SessionCorrupt(f"{where}: corrupt manifest ({e})") from None
    return manifest


def _check(manifest: dict[str, Any]) -> None:
    """Raise _Problem naming the first field that does not fit (so no KeyError or TypeError surfaces later)."""
    for key in ("clslm_version", "created"):
        _require(isinstance(manifest.get(key), str), f"{key!r} must be a string")
    _require(isinstance(manifest.get("updated", ""), str), "'updated' must be a string")
    model, strategy, state = manifest["model"], manifest["strategy"], manifest["state"]
    _require(isinstance(model, dict) and all(_is_text(model.get(k)) for k in ("ref", "kind", "fingerprint")), "'model' needs string ref, kind and fingerprint")
    _require(isinstance(strategy, dict) and _is_text(strategy.get("name")) and isinstance(strategy.get("config"), dict), "'strategy' needs a string name and a config object")
    _require(isinstance(state, dict) and set(state) == {"tensors", "extra"}, "'state' needs exactly tensors and extra")
    for kind, entry in state.items():
        if entry is not None:
            _check_blob(kind, entry)
    documents = manifest["documents"]
    _require(isinstance(documents, list), "'documents' must be a list of {name, tokens, seconds, ...} objects")
    for i, entry in enumerate(documents):
        _check_document(i, entry)


def _check_blob(kind: str, entry: Any) -> None:
    """{file, bytes, sha256} naming a content-named file inside the session: no directories, '..' or NUL."""
    what = f"state.{kind}"
    _require(isinstance(entry, dict) and isinstance(entry.get("file"), str) and isinstance(entry.get("sha256"), str), f"{what} needs a plain file name, bytes and sha256")
    name, digest, size = entry["file"], entry["sha256"], entry.get("bytes")
    match = STATE_FILE[kind].fullmatch(name)
    _require(match is not None, f"{what}.file must be a plain file name like {STATE_FILE[kind].pattern.replace(chr(92), '')}, not {name[:80]!r}")
    _require(SHA256.fullmatch(digest) is not None, f"{what}.sha256 must be 64 lowercase hex digits")
    _require(is_int(size) and 0 < size <= MAX_STATE_BYTES, f"{what}.bytes must be a whole number from 1 to {MAX_STATE_BYTES}")


def _check_document(i: int, entry: Any) -> None:
    where = f"documents[{i}]"
    _require(isinstance(entry, dict) and _is_text(entry.get("name")), f"'documents' must be a list of {{name, tokens, seconds, ...}} objects ({where} has no name)")
    _require(is_int(entry.get("tokens")) and 0 <= entry["tokens"] <= MAX_COUNT, f"{where}.tokens must be a whole number from 0")
    _require(_is_number(entry.get("seconds")) and entry["seconds"] >= 0, f"{where}.seconds must be a number from 0")
    for key in ("loss_before", "loss_after"):
        _require(entry.get(key) is None or _is_number(entry[key]), f"{where}.{key} must be a number or null")
    for key in ("sha256", "encoding", "learned_at"):
        _require(isinstance(entry.get(key, ""), str), f"{where}.{key} must be a string")
    _require(isinstance(entry.get("extra", {}), dict), f"{where}.extra must be an object")


def _require(condition: bool, problem: str) -> None:
    if not condition:
        raise _Problem(problem)


def _is_number(x: Any) -> bool:
    return (is_int(x) and abs(x) <= MAX_COUNT) or (isinstance(x, float) and math.isfinite(x))


def _is_text(x: Any) -> bool:
    return isinstance(x, str) and x != "" and "\x00" not in x


def config_problem(config_cls: type, data: dict[str, Any]) -> str | None:
    """What is wrong with a saved strategy config's values for `config_cls`, if anything: each known key must
    hold its field's type (a float field: a finite number); unknown keys are dropped by config_from_dict."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        value, hint = data.get(field.name), hints[field.name]
        if field.name in data and not _fits(value, hint):
            expected = "a finite number" if hint is float else ("one of " + ", ".join(map(repr, typing.get_args(hint))) if typing.get_args(hint) else f"of type {getattr(hint, '__name__', hint)}")
            return f"{field.name}={value!r} is not {expected}"
    return None


def _fits(value: Any, hint: Any) -> bool:
    import typing

    if typing.get_origin(hint) is typing.Literal:
        return any(type(value) is type(choice) and value == choice for choice in typing.get_args(hint))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_int(value)
    if hint is float:
        return _is_number(value)
    if hint is str:
        return isinstance(value, str)
    if hint == (str | None):
        return value is None or isinstance(value, str)
    return True  # a type this check does not know: the Config's own checks decide


def checked_config(config):
    """A config from -o options: its float options must be finite (the manifest is strict JSON)."""
    problem = config_problem(type(config), asdict(config))
    if problem:
        raise InputError(f"option {problem}")
    return config


def strict_numbers(value: Any) -> Any:
    """A learn report with each non-finite number (a loss, an extra) as null: the manifest is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_numbers(v) for v in value]
    return value


def read_manifest(path: Path) -> Any:
    """The parsed JSON of a manifest: at most MAX_MANIFEST_BYTES, nested at most MAX_DEPTH, strict JSON."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise SessionCorrupt(f"{path}: cannot read manifest ({e.strerror or e})") from None
    return load_json(data, path, "corrupt manifest", max_bytes=MAX_MANIFEST_BYTES)


def read_committed(path: Path, default: dict[str, Any]) -> dict[str, Any]:
    """The manifest on disk (the committed session), or `default` when there is none or it does not load."""
    try:
        return upgrade(read_manifest(path), path)
    except SessionError:
        return default
