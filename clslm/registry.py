"""Strategy names → classes: built-ins and entry points ("clslm.strategies"), imported lazily."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from .errors import StrategyNotImplemented, UnknownStrategy

BUILTIN = {
    "ttt": "clslm.strategies.ttt:TTT",
    "ttt-linear": "clslm.strategies.ttt_linear:TTTLinear",
    "jitrl-mvp": "clslm.strategies.jitrl_mvp:JitrlMVP",
    "jitrl-full": "clslm.strategies.jitrl_full:JitrlFull",
    "ace": "clslm.strategies.ace:Ace",
    "doc2lora": "clslm.strategies.doc2lora:Doc2LoRA",
}
# Reserved names whose implementation has not landed yet: they error clearly instead of "unknown".
PLANNED: set[str] = set()
_registered: dict[str, type] = {}


def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group="clslm.strategies")}


def names() -> list[str]:
    """Every strategy name a user may pass to --strategy (planned ones included)."""
    return sorted({*BUILTIN, *PLANNED, *_entry_points(), *_registered})


def available() -> list[str]:
    """Names that are implemented and can be used now."""
    return [n for n in names() if n not in PLANNED or n in _registered]


def register(cls: type) -> type:
    """Add a Strategy class at run time (tests, notebooks); refuses a name already taken."""
    if cls.name in BUILTIN or cls.name in _entry_points() or cls.name in _registered:
        raise ValueError(f"strategy {cls.name!r} already exists; pick another name")
    _registered[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    _registered.pop(name, None)


def get(name: str) -> type:
    """The Strategy class for `name`; UnknownStrategy / StrategyNotImplemented otherwise."""
    if name in _registered:
        return _registered[name]
    target = BUILTIN.get(name) or _entry_points().get(name)
    if target is None:
        if name in PLANNED:
            raise StrategyNotImplemented(f"strategy {name!r} is not implemented yet; available: {', '.join(available())}")
        raise UnknownStrategy(f"unknown strategy {name!r}; choose from: {', '.join(available())}")
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
