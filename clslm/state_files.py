"""Every file a session reads, checked before anything uses it (issue 18).

Limits come first (size, then nesting, counted on the raw bytes), then parsing (strict JSON: no NaN or
Infinity), then types and bounds (clslm/manifest.py for the manifest; here for the state files: the JSON
state must be an object, and the tensors' names, dtypes and shapes must fit the model the strategy put
them on). Whatever does not fit is SessionCorrupt (exit 4): one line naming the file and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

from .atomic import write_atomic
from .errors import ClslmError, SessionCorrupt, TrainingDiverged

MAX_DEPTH = 64  # clslm writes at most 6 levels (routing keys: sentences of [term, weight] pairs)
MAX_MANIFEST_BYTES = 64 * 2**20  # about 200,000 documents
MAX_STATE_BYTES = 2**40  # a bound for the manifest's `bytes`; the file itself must then match it exactly

# Strings (whose brackets do not count) in the unrolled form, which never backtracks.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(data: bytes) -> int:
    """How deep the arrays and objects in `data` nest, counted without parsing (so without recursing)."""
    depth = deepest = 0
    for b in _STRING.sub(b"", data).translate(None, _NOT_BRACKET):
        if b in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def write_blob(directory: Path, stem: str, suffix: str, data: bytes) -> dict[str, Any]:
    """Write `data` once as DIRECTORY/STEM-<sha16>SUFFIX (atomically); its manifest entry {file, bytes, sha256}."""
    digest = hashlib.sha256(data).hexdigest()
    name = f"{stem}-{digest[:16]}{suffix}"
    if not (directory / name).is_file():
        write_atomic(directory / name, lambda tmp: tmp.write_bytes(data))
    return {"file": name, "bytes": len(data), "sha256": digest}


def write_tensors(directory: Path, tensors: dict[str, Any], strategy: str) -> dict[str, Any]:
    """A strategy's learned tensors as deltas-<sha16>.safetensors; its manifest entry."""
    from safetensors.torch import save

    # One metadata key: safetensors writes several in a per-process random order, and content-named
    # files must be the same bytes for the same state.
    return write_blob(directory, "deltas", ".safetensors", save(tensors, metadata={"strategy": strategy}))


def write_extra(directory: Path, extra: dict[str, Any], strategy: str) -> dict[str, Any]:
    """A strategy's JSON state as state-<sha16>.json (a non-finite number in it is divergence); its manifest entry."""
    try:
        text = json.dumps(extra, sort_keys=True, allow_nan=False)
    except ValueError:
        raise TrainingDiverged(f"learned state of {strategy} holds a non-finite number; nothing was saved") from None
    return write_blob(directory, "state", ".json", text.encode("utf-8"))


def read_blob(directory: Path, entry: dict[str, Any]) -> bytes:
    """The bytes of the state file a manifest entry names, checked: in `directory`, its size, its sha256."""
    path = directory / entry["file"]
    if Path(entry["file"]).name != entry["file"] or not path.is_file():
        raise SessionCorrupt(f"{path}: state file missing")
    if path.stat().st_size != entry["bytes"]:  # before reading it: a state file is never read past its size
        raise SessionCorrupt(f"{path}: state file is truncated or altered (size/sha256 mismatch)")
    data = path.read_bytes()
    if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise SessionCorrupt(f"{path}: state file is truncated or altered (size/sha256 mismatch)")
    return data


def check_finite(tensors: dict[str, Any]) -> None:
    """Learned tensors about to be saved: a non-finite one is divergence (nothing is saved)."""
    import torch

    for name, value in tensors.items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise TrainingDiverged(f"learned state {name} is not finite; nothing was saved")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} does not fit a float")
    return value


def load_json(data: bytes, where: Path, what: str, *, max_bytes: int) -> Any:
    """Strict JSON from `data`, or SessionCorrupt "WHERE: WHAT (problem)"."""
    if len(data) > max_bytes:
        raise SessionCorrupt(f"{where}: {what} (larger than {max_bytes} bytes)")
    depth = json_depth(data)
    if depth > MAX_DEPTH:
        raise SessionCorrupt(f"{where}: {what} (nested {depth} deep, more than {MAX_DEPTH})")
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite)
    except UnicodeDecodeError:
        raise SessionCorrupt(f"{where}: {what} (not UTF-8)") from None
    except json.JSONDecodeError as e:
        raise SessionCorrupt(f"{where}: {what} ({e.msg}: line {e.lineno} column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # NaN, 1e999, an integer of more than 4300 digits
        raise SessionCorrupt(f"{where}: {what} ({str(e).splitlines()[0]})") from None


def load_extra(data: bytes, where: Path) -> dict[str, Any]:
    state = load_json(data, where, "corrupt state", max_bytes=MAX_STATE_BYTES)
    if not isinstance(state, dict):
        raise SessionCorrupt(f"{where}: corrupt state (a JSON object expected, found {type(state).__name__})")
    return state


def load_tensors(data: bytes, where: Path) -> dict[str, Any]:
    """The tensors of a safetensors file: names, dtypes, shapes and offsets are checked by safetensors
    itself (its header parser bounds nesting); here: at least one tensor, none empty, floats finite."""
    import torch
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as e:  # SafetensorError, or anything its parser raises on a damaged header
        raise SessionCorrupt(f"{where}: unreadable safetensors ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not tensors:
        raise SessionCorrupt(f"{where}: holds no tensors (clslm writes no tensor file then)")
    for name, value in tensors.items():
        if value.numel() == 0:
            raise SessionCorrupt(f"{where}: tensor {name!r} is empty (shape {list(value.shape)})")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise SessionCorrupt(f"{where}: tensor {name!r} holds non-finite values (clslm never saves them)")
    return tensors


# Exceptions a strategy's load_state_dict / load_extra_state raises on state that does not fit it.
LOAD_ERRORS = (ClslmError, KeyError, ValueError, TypeError, IndexError, AttributeError, RuntimeError)


def load_extra_into(strategy, state: dict[str, Any], where: Path) -> None:
    """Let the strategy check the JSON state's layout (Strategy.check_extra_state), then load it."""
    try:
        strategy.check_extra_state(state)
        strategy.load_extra_state(state)
    except LOAD_ERRORS as e:
        raise SessionCorrupt(f"{where}: state does not fit {strategy.name!r} ({_one_line(e)})") from None


def load_into(strategy, tensors: dict[str, Any], where: Path) -> None:
    """Check `tensors` against the model `strategy` runs on, load them, and check what was loaded."""
    expected = _layout(strategy.state_dict())
    if expected:  # the strategy's tensors exist before loading (ttt-linear): the file must match them
        _compare(_layout(tensors), expected, where)
    try:
        strategy.check_state_dict(tensors)
        strategy.load_state_dict(tensors)
    except LOAD_ERRORS as e:
        raise SessionCorrupt(f"{where}: state does not fit {strategy.name!r} on this model ({_one_line(e)})") from None
    _compare(_layout(strategy.state_dict()), _layout(tensors), where)  # nothing dropped, nothing reshaped


def _one_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return (text.splitlines() or [type(e).__name__])[0][:300]


def _layout(tensors: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], bool]]:
    return {name: (tuple(t.shape), t.is_floating_point()) for name, t in tensors.items()}


def _compare(got: dict, expected: dict, where: Path) -> None:
    if set(got) != set(expected):
        missing, unexpected = sorted(set(expected) - set(got))[:2], sorted(set(got) - set(expected))[:2]
        raise SessionCorrupt(f"{where}: tensors do not fit the model (missing {missing}, unexpected {unexpected})")
    for name, (shape, floating) in got.items():
        if (shape, floating) != expected[name]:
            kind = "floating-point" if expected[name][1] else "integer"
            raise SessionCorrupt(f"{where}: tensor {name!r} should be {kind} of shape {list(expected[name][0])}, not {list(shape)}")


# ---- what the strategies' check_extra_state / check_state_dict use ---------------------------------------


def need(condition: bool, problem: str) -> None:
    """A layout check: ValueError(problem) unless `condition` (load_extra_into/load_into name the file)."""
    if not condition:
        raise ValueError(problem)


def is_int(x: Any) -> bool:
    """A whole number that is not a bool (JSON true/false load as bools)."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    return is_int(x) or (isinstance(x, float) and math.isfinite(x))
