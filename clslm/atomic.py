"""Crash-safe file writes: temp file in the same directory, fsync, os.replace."""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) then rename tmp over path; a crash leaves the old file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        crash_point(f"before-replace:{path.name}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    crash_point(f"after-replace:{path.name}")
    _fsync_dir(path.parent)


def is_temp(path: Path) -> bool:
    """A temp file write_atomic leaves behind only when its process was killed mid-write."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def crash_point(name: str) -> None:
    """Fault injection for the crash tests (tests/test_crash.py); a no-op unless $CLSLM_TEST_CRASH_AT is set.

    CLSLM_TEST_CRASH_AT=PATTERN (fnmatch) names the points to stop at: "learning" (each training step),
    "before-replace:NAME" (temp file written and fsynced, not yet renamed), "after-replace:NAME";
    $CLSLM_TEST_CRASH_SIGNAL (default SIGKILL) is sent to this process there. A real signal at a named
    moment keeps those tests deterministic.
    """
    pattern = os.environ.get("CLSLM_TEST_CRASH_AT")
    if pattern and fnmatch.fnmatchcase(name, pattern):
        os.kill(os.getpid(), getattr(signal, os.environ.get("CLSLM_TEST_CRASH_SIGNAL", "SIGKILL")))


def write_json_atomic(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
