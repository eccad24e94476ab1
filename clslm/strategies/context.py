"""What the Session gives a strategy besides model and tokenizer: the model's fingerprint and a cache.

A strategy writes no file of its own; a cache (derived data: deleting it costs time, never a result) goes
through `StrategyContext.cached`, under the directory the Session names ($CLSLM_HOME), written atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class StrategyContext:
    model_fingerprint: str = ""  # identifies the base model's weights ("" when unknown): a cache key
    cache_dir: Path | None = None  # where caches live; None: nothing is cached

    def cached(self, name: str, compute: Callable[[], T], load: Callable[[Path], T], save: Callable[[T, Path], None]) -> T:
        """The cache file `name` (a relative path such as "calibration/KEY.safetensors") read by `load` when it is
        there; else compute() and, when there is a cache directory, save(value, tmp) written atomically."""
        from ..atomic import write_atomic

        parts = PurePosixPath(name).parts
        if not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name:
            raise ValueError(f"cache name {name!r}: a relative path inside the cache directory")
        if self.cache_dir is None:
            return compute()
        path = Path(self.cache_dir, *parts)
        if path.is_file():
            return load(path)
        value = compute()
        write_atomic(path, lambda tmp: save(value, tmp))
        return value
