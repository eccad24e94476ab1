"""The latest measured figures per strategy (clslm/data/measured.json), and the tables made from them.

measured.json holds, per strategy, what `clslm compare` measured last (accuracy on held-out documents, gain
recovery, forgetting, learn seconds per 1,000 tokens, ask seconds, state per document), the compare they come
from (command, date, machine, documents), and three words a compare does not measure: its status, what it
answers from and what is in the prompt when it answers. `benchmarks/strategy_table.py` writes the figures
from a compare's compare.json and rewrites the README's "Which strategy?" table; `clslm strategies` prints
the same figures. Standard library only: listing strategies imports no torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PATH = Path(__file__).resolve().parent / "data" / "measured.json"
FIGURES = ("accuracy", "gain_recovery", "forgetting", "learn_s_per_1k_tokens", "ask_s", "state_mb_per_doc")
WORDS = ("status", "answers_from", "in_prompt")  # written by hand; a compare never changes them
DEFAULT = "ttt"  # the strategy a new session gets; its compare gives the reference rows
DASH = "–"
FOOTER = (
    "Accuracy on held-out documents learned in sequence, then asked without them; forgetting on general questions"
    " ([definitions](benchmarks/README.md)). Each compare's exact command: [clslm/data/measured.json](clslm/data/measured.json);"
    " the runs: [docs/benchmarks.md](docs/benchmarks.md)."
)
COLUMNS = ("strategy", "accuracy", "gain recovery", "forgetting", "learn s/1k tok", "ask s", "state/doc", "in the prompt when it answers")


def load(path: Path = PATH) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def dump(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


# ---- numbers as the tables show them ------------------------------------------------------------------


def fmt(key: str, value: Any) -> str:
    if value is None:
        return DASH
    if key in ("accuracy", "forgetting", "gain_recovery"):
        return f"{value:.3f}"
    if key == "ask_s":
        return f"{value:.2f}"
    if key == "learn_s_per_1k_tokens":
        return f"{value:.2f}" if value < 1 else f"{value:.1f}" if value < 10 else f"{value:,.0f}"
    if key == "state_mb_per_doc":
        if value == 0:
            return "≈ 0"
        return f"{value * 1000:.0f} kB" if value < 0.1 else f"{value:.2f} MB" if value < 1 else f"{value:.1f} MB" if value < 10 else f"{value:.0f} MB"
    return str(value)


# ---- the rows: strategies by accuracy, the reference rows from the default strategy's compare ---------


def ordered(data: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Strategies by measured accuracy, best first (ties keep the file's order); unmeasured ones last."""
    items = list(data["strategies"].items())
    return sorted(items, key=lambda item: -(item[1].get("accuracy") if item[1].get("accuracy") is not None else -1))


def sources(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The distinct compares the rows come from, in the order the table first uses them."""
    found: list[dict[str, Any]] = []
    for _, entry in ordered(data):
        source = entry.get("source")
        if source and source not in found:
            found.append(source)
    return found


def reference_rows(data: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(short name, label, figures, source) of the base model and of the whole document in the prompt."""
    source = data["strategies"].get(DEFAULT, {}).get("source")
    if not source or source.get("base_accuracy") is None:
        return []
    return [
        ("base", "base model (nothing learned)", {"accuracy": source["base_accuracy"], "in_prompt": "the question only"}, source),
        ("in-context", "whole document in the prompt", {"accuracy": source.get("in_context_accuracy"), "gain_recovery": 1.0, "in_prompt": "the question + the whole document"}, source),
    ]


def _cells(entry: dict[str, Any]) -> list[str]:
    return [fmt(key, entry.get(key)) for key in FIGURES] + [entry.get("in_prompt") or "?"]


def markdown_table(data: dict[str, Any]) -> str:
    """The README's "Which strategy?" table and, under it, the compares its figures come from."""
    found = sources(data)
    mark = {id(s): "¹²³⁴⁵⁶⁷⁸⁹"[i] if i < 9 else f"[{i + 1}]" for i, s in enumerate(found)}

    def marker(source: dict[str, Any] | None) -> str:
        for s in found:
            if s == source:
                return mark[id(s)]
        return ""

    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(FIGURES) + "---|"]
    for name, entry in ordered(data):
        label = f"`{name}`" + (" (default)" if name == DEFAULT else "")
        lines.append("| " + " | ".join([label + " " + marker(entry.get("source")), *_cells(entry)]) + " |")
    for _, label, entry, source in reference_rows(data):
        lines.append("| " + " | ".join([f"*{label}* {marker(source)}", *_cells(entry)]) + " |")
    lines.append("")
    for s in found:
        lines.append(f"{mark[id(s)]} {source_line(s)}  ")
    lines.append(FOOTER)
    return "\n".join(lines)


def source_line(source: dict[str, Any]) -> str:
    """One compare in a line: when, which documents, which machine, the reference accuracies there."""
    parts = [source.get("date"), source.get("documents"), source.get("machine")]
    refs = [f"{label} {fmt('accuracy', source[key])}" for key, label in (("base_accuracy", "base model"), ("in_context_accuracy", "whole document in the prompt")) if source.get(key) is not None]
    if refs:
        parts.append(", ".join(refs))
    text = " · ".join(p for p in parts if p)
    return text + (f" · {source['note']}" if source.get("note") else "")


# ---- `clslm strategies`: the same in one screen --------------------------------------------------------


def screen_lines(data: dict[str, Any], names: list[str]) -> list[str]:
    """One line per strategy (status, the figures, what is in the prompt) and one per compare they come from."""
    found = sources(data)
    short = ("strategy", "accuracy", "gain", "forget", "learn s/1k", "ask s", "state/doc")
    widths = [12, 8, 6, 6, 10, 5, 9]
    measured = dict(ordered(data))
    rows = [name for name in measured if name in names] + [name for name in names if name not in measured]

    def line(cells: list[str]) -> str:
        return "  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths)))

    lines = [line(list(short)) + "  in the prompt when it answers · status"]
    for name in rows:
        entry = measured.get(name)
        if entry is None:
            lines.append(line([name, *[DASH] * (len(short) - 1)]) + "  not measured")
            continue
        source = entry.get("source")
        tag = f" [{found.index(source) + 1}]" if source in found else ""
        cells = [name, *[fmt(key, entry.get(key)) for key in FIGURES]]
        lines.append(line(cells) + f"  {entry.get('in_prompt') or '?'} · {entry.get('status') or ''}{tag}")
    for short_name, label, entry, source in reference_rows(data):
        tag = f" [{found.index(source) + 1}]" if source in found else ""
        lines.append(line([short_name, *[fmt(key, entry.get(key)) for key in FIGURES]]) + f"  {entry['in_prompt']} · {label}{tag}")
    lines.append("")
    for i, source in enumerate(found, 1):
        lines.append(f"[{i}] {source.get('date', '')}: {source.get('documents', '')}; {source.get('machine', '')}")
    return lines
