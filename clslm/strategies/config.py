"""A strategy's hyperparameters: StrategyConfig, option() (each option's help and bounds, checked in one place),
and building a Config from `-o KEY=VALUE` strings or from a saved manifest."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None, above: float | None = None) -> Any:
    """A Config field with its help and bounds (`min` <= value <= `max`; `above` < value), which
    StrategyConfig checks and `clslm strategies` shows."""
    bounds = {k: v for k, v in (("min", min), ("max", max), ("above", above)) if v is not None}
    return field(default=default, metadata={"help": help, **bounds})


def bounds_text(metadata: Any) -> str:
    """A field's bounds as its check's message says them: "in (0, 1]", ">= 1", "" when it has none."""
    low, high, above = (metadata.get(k) for k in ("min", "max", "above"))
    if above is not None:
        return f"> {above}" if high is None else f"in ({above}, {high}]"
    if low is not None:
        return f">= {low}" if high is None else f"in [{low}, {high}]"
    return ""


def option_help(config_cls: type) -> dict[str, str]:
    """Each option's help, with its bounds (for `clslm strategies`)."""
    texts = {}
    for f in dataclasses.fields(config_cls):
        bounds = bounds_text(f.metadata)
        texts[f.name] = f.metadata.get("help", "") + (f" ({bounds})" if bounds else "")
    return texts


@dataclass
class StrategyConfig:
    """Hyperparameters; saved in session.json; set from the CLI with -o KEY=VALUE.

    Declare each option with option(default, help, min=/max=/above=): its bounds are checked here, in
    __post_init__ (a subclass with checks across options calls super().__post_init__() first).
    """

    seed: int = option(0, "random seed of everything the strategy draws")

    def __post_init__(self) -> None:
        """Check every option's declared bounds (metadata "min", "max", "above": an exclusive least value)."""
        for f in dataclasses.fields(self):
            low, high, above = (f.metadata.get(k) for k in ("min", "max", "above"))
            value, least = getattr(self, f.name), above if above is not None else low
            if least is None and high is None:
                continue
            ok = (least is None or (value > least if above is not None else value >= least)) and (high is None or value <= high)
            self.check(ok, f"{f.name} must be {bounds_text(f.metadata)}")

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            raise InputError(f"{type(self).__qualname__.split('.')[0]}: {message}")


def parse_options(config_cls: type[StrategyConfig], options: dict[str, str], base: StrategyConfig | None = None) -> StrategyConfig:
    """Build a Config from -o KEY=VALUE strings, coerced to the field types; unknown keys are errors.

    `preset=NAME` stands for the options in the Config's PRESETS[NAME]; other -o values override them.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    values = dataclasses.asdict(base) if base is not None else {}
    presets = getattr(config_cls, "PRESETS", {})
    valid = f"valid keys: {', '.join(sorted(fields) + (['preset'] if presets else []))}"
    if "preset" in options:
        options = dict(options)
        name = options.pop("preset")
        if name not in presets:
            known = ", ".join(sorted(presets)) or "none for this strategy"
            raise InputError(f"unknown preset {name!r}; presets: {known}")
        options = presets[name] | options  # explicit -o values win over the preset's
    for key, raw in options.items():
        if key not in fields:
            raise InputError(f"unknown option {key!r}; {valid}")
        try:
            values[key] = coerce(key, raw, hints[key])
        except InputError as e:
            raise InputError(f"{e}; {valid}") from None
    try:
        return config_cls(**values)
    except InputError as e:  # a value the Config's checks refuse (e.g. lr <= 0)
        if not options:
            raise
        raise InputError(f"{e}; {valid}") from None


def coerce(key: str, raw: Any, hint: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
    try:
        if choices:
            if raw not in choices:
                raise ValueError(f"choose from {', '.join(map(str, choices))}")
            return raw
        if hint is bool:
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError("expected true or false")
            return raw.lower() in ("1", "true", "yes", "on")
        if hint is int:
            try:
                return int(raw)
            except ValueError:
                raise ValueError("expected an integer") from None
        if hint is float:
            try:
                return float(raw)
            except ValueError:
                raise ValueError("expected a number") from None
        if hint is str:
            return raw
        if hint == (str | None):
            return raw or None
    except ValueError as e:
        raise InputError(f"option {key}={raw!r}: {e}") from None
    raise InputError(f"option {key}: cannot be set from the command line")


def config_from_dict(config_cls: type[StrategyConfig], data: dict[str, Any]) -> StrategyConfig:
    """Rebuild a Config saved in a manifest; keys from newer/older versions are dropped, defaults fill gaps."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: v for k, v in data.items() if k in names})
