"""`clslm info`, `clslm docs` and `clslm strategies`: what a session holds, what strategies there are."""

from __future__ import annotations

from ..paths import DEFAULT_SESSION
from .app import JsonOpt, SessionOpt, app
from .output import document_lines, emit_json, out


@app.command()
def info(*, session: SessionOpt = DEFAULT_SESSION, as_json: JsonOpt = False) -> None:
    """Show a session: model, strategy and settings, documents learned, state size."""
    from ..session import Session

    data = Session.open(session).info()
    if as_json:
        emit_json(data)
        return
    out.print(f"session   {data['session']}")
    out.print(f"model     {data['model']['ref']} ({data['model']['kind']}, {data['model']['fingerprint'][:12]})")
    out.print(f"strategy  {data['strategy']['name']}  " + " ".join(f"{k}={v}" for k, v in data["strategy"]["config"].items()))
    out.print(f"state     {data['state_bytes'] / 1e6:.2f} MB")
    for line in document_lines(data["documents"], losses=True) if data["documents"] else ["documents none yet"]:
        out.line(line)


@app.command()
def docs(*, session: SessionOpt = DEFAULT_SESSION, as_json: JsonOpt = False) -> None:
    """List the documents a session learned: hash, tokens, size, when, full name (`clslm forget` takes either)."""
    from ..session import Session

    s = Session.open(session)
    keys = ("name", "sha256", "tokens", "characters", "learned_at", "seconds", "encoding")
    documents = [{k: d[k] for k in keys if k in d} for d in s.documents]
    if as_json:
        emit_json({"session": str(s.path), "strategy": s.strategy_name, "documents": documents})
        return
    for line in document_lines(documents) if documents else [f"{s.path}: no documents learned yet"]:
        out.line(line)


@app.command()
def strategies(as_json: JsonOpt = False) -> None:
    """List strategies, their -o options with defaults, help and bounds, and their presets (-o preset=NAME)."""
    from .listing import strategy_rows

    rows = strategy_rows()
    if as_json:
        emit_json({"strategies": rows})
        return
    for row in rows:
        out.print(f"[bold]{row['name']}[/bold]  {row['summary']}")
        helps = row.get("help", {})
        for key, value in row["options"].items():
            out.print(f"   {key}={value}" + (f"  {helps[key]}" if helps.get(key) else ""), highlight=False)
        for preset, values in row.get("presets", {}).items():
            out.print(f"   preset={preset}: " + " ".join(f"{k}={v}" for k, v in values.items()), highlight=False)
