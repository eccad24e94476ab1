"""Benchmark figures as text cells, a Markdown table, per-question CSV and a matplotlib chart.

One table shape serves `clslm bench` and `clslm compare`: reference rows `base` and `in_context`, then
one row per strategy (or a "not implemented" / "failed" row). Printing is left to the CLI. "accuracy" is
answer-contains, "strict acc" the strict metric beside it (scoring.strict_answer).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .bench_results import BenchResult, Comparison, QuestionRow, Unavailable

COLUMNS = (
    "setting",
    "accuracy",
    "strict acc",
    "F1",
    "gain recovery",
    "general acc",
    "general NLL",
    "forgetting",
    "retention doc 1",
    "learn s/1k tok",
    "ask s",
    "state MB/doc",
)
DASH = "–"


def reference_of(result: BenchResult) -> dict[str, Any]:
    """The strategy-independent part of a bench result, shaped like Comparison.reference."""
    keys = ("base", "in_context")
    general = {k: result.general[k] for k in ("questions", "before", "nll_before")}
    scores = {name: {k: getattr(result, name)[k] for k in keys} for name in ("accuracy", "strict_accuracy", "f1")}
    return {**scores, "general": general}


def table_rows(reference: dict[str, Any], entries: list[BenchResult | Unavailable]) -> list[list[str]]:
    """Cells (strings) under COLUMNS: base, in_context, then each strategy."""
    general = reference["general"]

    def scores(key: str) -> list[str]:  # accuracy, strict acc, F1 (a dash for a figure the reference lacks)
        return [num(reference.get(name, {}).get(key)) for name in ("accuracy", "strict_accuracy", "f1")]

    base = ["base", *scores("base"), DASH, num(general.get("before")), num(general.get("nll_before"), 2), *[DASH] * 5]
    read = ["in_context", *scores("in_context"), *[DASH] * (len(COLUMNS) - 4)]
    return [base, read, *(_strategy_row(e) for e in entries)]


def _strategy_row(entry: BenchResult | Unavailable) -> list[str]:
    if isinstance(entry, Unavailable):
        return [entry.strategy, entry.status, *[DASH] * (len(COLUMNS) - 2)]
    retention = entry.retention
    kept = num(retention["first_doc_right_after"])
    if retention["first_doc_after_all"] is not None:
        kept += f" → {num(retention['first_doc_after_all'])}"
    return [
        entry.strategy,
        num(entry.accuracy["learned"]),
        num(entry.strict_accuracy["learned"]),
        num(entry.f1["learned"]),
        num(entry.gain_recovery),
        num(entry.general["after"]),
        num(entry.general["nll_after"], 2),
        num(entry.forgetting),
        kept,
        num(entry.learn_seconds_per_1k_tokens, 1),
        num(entry.ask_seconds_mean, 2),
        num(entry.state_mb_per_doc, 2),
    ]


def num(value: float | None, digits: int = 3) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def markdown(rows: list[list[str]], *, model: str, mode: str, docs: int, questions: int, general_questions: int, machine: dict[str, Any]) -> str:
    """A Markdown table with a line saying what was measured and where."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|"]
    lines += ["| " + " | ".join([f"`{r[0]}`", *r[1:]]) + " |" for r in rows]
    where = f"{machine.get('cpu')} ({machine.get('cpu_count')} cores, {machine.get('torch_threads')} torch threads), {machine.get('device')} {machine.get('dtype')}"
    lines.append("")
    lines.append(
        f"Model `{model}`, mode {mode}: {docs} documents, {questions} questions; general set {general_questions} questions. "
        f"{where}; torch {machine.get('torch')}, clslm {machine.get('clslm')}; {machine.get('date')}."
    )
    return "\n".join(lines)


def write_outputs(directory: Path, result: BenchResult) -> list[Path]:
    """DIR/result.json (the --json object) and DIR/questions.csv (one row per question)."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = directory / "result.json", directory / "questions.csv"
    json_path.write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
    write_csv(csv_path, result.rows)
    return [json_path, csv_path]


def folder_name(label: str) -> str:
    """A variant's label as one directory name: `doc2lora[hypernet=build/hn.safetensors]` → `doc2lora[hypernet=build_hn.safetensors]`."""
    return re.sub(r"[^\w.,=+\[\]-]", "_", label).lstrip(".") or "_"


def write_comparison(directory: Path, comparison: Comparison, table_md: str) -> list[Path]:
    """DIR/compare.json (the --json object), DIR/compare.md (the --markdown table), DIR/NAME/questions.csv."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, md_path = directory / "compare.json", directory / "compare.md"
    json_path.write_text(json.dumps(asdict(comparison), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(table_md + "\n", encoding="utf-8")
    written = [json_path, md_path]
    for entry in comparison.strategies:
        if isinstance(entry, BenchResult):
            folder = directory / folder_name(entry.strategy)
            folder.mkdir(exist_ok=True)
            written.append(folder / "questions.csv")
            write_csv(written[-1], entry.rows)
    return written


def write_csv(path: Path, rows: list[QuestionRow]) -> None:
    fields = ["doc_id", "question", "answers"] + [f"{k}{s}" for k in ("base", "in_context", "learned") for s in ("", "_hit", "_strict")]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: " | ".join(v) if k == "answers" else v for k, v in asdict(row).items()})


def plot(path: Path, reference: dict[str, Any], entries: list[BenchResult | Unavailable], *, title: str) -> None:
    """Three panels: accuracy base / in context / learned per strategy, forgetting, learn time."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    names = [e.strategy for e in entries]
    measured = [e if isinstance(e, BenchResult) else None for e in entries]
    fig = Figure(figsize=(max(11, 3 + 2.2 * len(names)), 4.2), layout="tight")
    ax_acc, ax_forget, ax_time = fig.subplots(1, 3, gridspec_kw={"width_ratios": [2, 1, 1]})
    _accuracy_panel(ax_acc, names, entries, reference)
    _bar_panel(ax_forget, names, [m.forgetting if m else None for m in measured], "forgetting (general set)", percent=True)
    _bar_panel(ax_time, names, [m.learn_seconds_per_1k_tokens if m else None for m in measured], "learn seconds per 1k tokens")
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=130)


def _accuracy_panel(ax, names, entries, reference) -> None:
    import numpy as np

    x, width = np.arange(len(names)), 0.26
    measured = [isinstance(e, BenchResult) for e in entries]
    series = [
        ("base", reference["accuracy"]["base"], "#9e9e9e"),
        ("in context", reference["accuracy"]["in_context"], "#5b8bd0"),
        ("learned", None, "#e07b39"),
    ]
    for k, (label, shared, color) in enumerate(series):
        values = [(shared if shared is not None else e.accuracy["learned"]) if ok else None for e, ok in zip(entries, measured)]
        bars = ax.bar(x + (k - 1) * width, [v or 0 for v in values], width, label=label, color=color)
        ax.bar_label(bars, labels=["" if v is None else f"{v:.2f}" for v in values], fontsize=7, padding=1)
    for i, entry in enumerate(entries):
        if not measured[i]:
            ax.text(x[i], 0.05, entry.status, ha="center", va="bottom", rotation=90, fontsize=9, color="#666")
    _name_ticks(ax, names)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.set_title("facts questions: accuracy", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", ncols=3, frameon=False)


def _bar_panel(ax, names, values, title, *, percent: bool = False) -> None:
    scale = 100 if percent else 1
    heights = [(v or 0) * scale for v in values]
    bars = ax.bar(names, heights, color="#6a9f58")
    labels = ["n/a" if v is None else (f"{v * 100:.1f}%" if percent else f"{v:.1f}") for v in values]
    ax.bar_label(bars, labels=labels, fontsize=8, padding=1)
    ax.axhline(0, color="black", linewidth=0.6)
    low, high = min(heights + [0]), max(heights + [0])
    pad = (high - low) * 0.15 or 1
    ax.set_ylim(low - (pad if low < 0 else 0), high + pad)
    ax.set_title(title, fontsize=10)
    if percent:
        ax.set_ylabel("% of general accuracy lost")
    _name_ticks(ax, names)


def _name_ticks(ax, names) -> None:
    """Strategy names under the bars, slanted when there are several (variant labels are long)."""
    slanted = len(names) > 2
    ax.set_xticks(range(len(names)), names, rotation=25 if slanted else 0, ha="right" if slanted else "center", rotation_mode="anchor", fontsize=8)
