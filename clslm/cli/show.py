"""`clslm info`, `clslm docs` and `clslm strategies`: what a session holds, what strategies there are."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..paths import DEFAULT_SESSION
from .app import JsonOpt, SessionOpt, app, check_strategy
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
def strategies(
    names: Annotated[Optional[list[str]], typer.Argument(help="Show these strategies' -o options too.", show_default=False, metavar="[NAME]...")] = None,
    *,
    options: Annotated[bool, typer.Option("--options", help="Show every strategy's -o options, help, bounds and presets.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Which strategy: each one's latest measured figures and what is in its prompt, on one screen.

    `clslm strategies NAME` or `--options` adds the -o options with their defaults, help and bounds, and the
    presets (-o preset=NAME). The figures are the packaged clslm/data/measured.json (docs/benchmarks.md).
    """
    from .. import measured, registry

    data = measured.load()
    for name in names or []:
        check_strategy(name)
    if as_json:
        from .listing import strategy_rows

        rows = [row | {"measured": data["strategies"].get(row["name"])} for row in strategy_rows()]
        emit_json({"strategies": [row for row in rows if not names or row["name"] in names]})
        return
    for line in measured.screen_lines(data, registry.names()):
        out.line(line)
    if not names and not options:
        out.line("`clslm strategies NAME` (or --options): its -o options; definitions of the figures: benchmarks/README.md")
        return
    from .listing import strategy_rows

    for row in strategy_rows():
        if names and row["name"] not in names:
            continue
        out.line("")
        out.print(f"[bold]{row['name']}[/bold]  {row['summary']}")
        helps = row.get("help", {})
        for key, value in row["options"].items():
            out.print(f"   {key}={value}" + (f"  {helps[key]}" if helps.get(key) else ""), highlight=False)
        for preset, values in row.get("presets", {}).items():
            out.print(f"   preset={preset}: " + " ".join(f"{k}={v}" for k, v in values.items()), highlight=False)
