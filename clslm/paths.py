"""Where clslm keeps caches and sessions."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_SESSION = Path("sessions") / "default"


def clslm_home() -> Path:
    """$CLSLM_HOME, else the platform cache directory (model caches, calibration statistics)."""
    env = os.environ.get("CLSLM_HOME")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("clslm"))
