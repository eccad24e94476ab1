"""How long a learn will take, said before it starts: tokens × seconds per 1k tokens.

The rate is this machine's own, from earlier learns with the same strategy, options and model (kept in
$CLSLM_HOME/learn-rates.json, each learn weighing twice the one before it, so a learn on a busy machine or
by an older version fades), else the strategy's latest compare on the default model on 2 CPU cores
(clslm/data/measured.json, the figures the README's table shows). Either way it is an estimate, and says so.
"""

from __future__ import annotations

import hashlib
import json

from .. import measured
from ..atomic import write_json_atomic
from ..models import DEFAULT_MODEL
from ..paths import clslm_home
from .progress import clock

RATES = "learn-rates.json"
WORTH_SAYING = 30.0  # seconds: shorter learns need no estimate
FADE = 0.5  # what the earlier learns weigh beside the newest one


def _rates() -> dict:
    try:
        data = json.loads((clslm_home() / RATES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _key(session) -> str:
    """Strategy, a hash of its options (a preset learns at another speed) and the model."""
    config = json.dumps(session.manifest.get("strategy", {}).get("config", {}), sort_keys=True)
    return f"{session.strategy_name} {hashlib.sha256(config.encode()).hexdigest()[:8]} {session.manifest['model']['fingerprint'][:16]}"


def _seen(rates: dict, key: str) -> dict[str, float]:
    """Tokens and seconds learned so far with this strategy and model (zeros when none or unreadable)."""
    seen = rates.get(key)
    if isinstance(seen, dict) and all(type(seen.get(k)) in (int, float) and seen[k] >= 0 for k in ("tokens", "seconds")):
        return {"tokens": seen["tokens"], "seconds": seen["seconds"]}
    return {"tokens": 0, "seconds": 0.0}


def seconds_per_1k(session) -> tuple[float, str] | None:
    """(seconds per 1k tokens, where the figure comes from), or None when there is none."""
    seen = _seen(_rates(), _key(session))
    if seen["tokens"] > 0:
        return 1000 * seen["seconds"] / seen["tokens"], "from earlier learns on this machine"
    figure = measured.load()["strategies"].get(session.strategy_name, {}).get("learn_s_per_1k_tokens")
    if figure and session.model_ref == DEFAULT_MODEL:
        return figure, f"measured on {DEFAULT_MODEL}, 2 CPU cores"
    return None


def estimate_line(session, tokens: int) -> str | None:
    """'estimate: ~12:00 for 9,338 tokens with ttt (…)' when the learn looks long enough to say so."""
    rate = seconds_per_1k(session)
    if rate is None or rate[0] * tokens / 1000 < WORTH_SAYING:
        return None
    return f"estimate: ~{clock(rate[0] * tokens / 1000)} for {tokens:,} tokens with {session.strategy_name} ({rate[1]})"


def record(session, reports) -> None:
    """Add these learns to this machine's rates (best effort: a cache, never an error)."""
    rates, key = _rates(), _key(session)
    seen = _seen(rates, key)
    tokens, seconds = sum(r.tokens for r in reports), sum(r.seconds for r in reports)
    rates[key] = {"tokens": round(FADE * seen["tokens"] + tokens, 1), "seconds": round(FADE * seen["seconds"] + seconds, 2)}
    try:
        clslm_home().mkdir(parents=True, exist_ok=True)
        write_json_atomic(clslm_home() / RATES, rates)
    except (OSError, TypeError, ValueError):
        pass
