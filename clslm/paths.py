"""Where clslm keeps caches and sessions."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InputError

DEFAULT_SESSION = Path("sessions") / "default"


def clslm_home() -> Path:
    """$CLSLM_HOME, else the platform cache directory (model caches, calibration statistics)."""
    env = os.environ.get("CLSLM_HOME")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("clslm"))


def session_path(path: str | Path) -> Path:
    """A --session value as a Path; a NUL byte in it is bad input."""
    text = os.fspath(path)
    if "\x00" in text:
        raise InputError("session path contains a NUL byte")
    return Path(text)
