"""`clslm info` and `clslm strategies`: what a session holds, what strategies there are."""

from __future__ import annotations

from rich.table import Table

from .. import registry
from ..errors import ClslmError
from ..paths import DEFAULT_SESSION
from .app import JsonOpt, SessionOpt, app
from .output import emit_json, out


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
    table = Table("document", "tokens", "loss before → after", "seconds", "learned at", box=None)
    for d in data["documents"]:
        before, after = d.get("loss_before"), d.get("loss_after")
        loss = "-" if before is None and after is None else " → ".join("-" if x is None else f"{x:.3f}" for x in (before, after))
        table.add_row(d["name"], str(d["tokens"]), loss, f"{d['seconds']:.1f}", d.get("learned_at", ""))
    out.print(table if data["documents"] else "documents none yet")


@app.command()
def strategies(as_json: JsonOpt = False) -> None:
    """List strategies, their -o options with defaults, and their presets (-o preset=NAME)."""
    import dataclasses

    rows = []
    for name in registry.names():
        try:
            cls = registry.get(name)
        except ClslmError:
            rows.append({"name": name, "available": False, "summary": "not implemented yet", "options": {}})
            continue
        options = {f.name: f.default for f in dataclasses.fields(cls.Config)}
        presets = getattr(cls.Config, "PRESETS", {})
        rows.append({"name": name, "available": True, "summary": cls.summary, "paper": cls.paper, "options": options, "presets": presets})
    if as_json:
        emit_json({"strategies": rows})
        return
    for row in rows:
        out.print(f"[bold]{row['name']}[/bold]  {row['summary']}")
        if row["options"]:
            out.print("   " + "  ".join(f"{k}={v}" for k, v in row["options"].items()), highlight=False)
        for preset, values in row.get("presets", {}).items():
            out.print(f"   preset={preset}: " + " ".join(f"{k}={v}" for k, v in values.items()), highlight=False)
