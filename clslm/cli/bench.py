"""`clslm bench` and `clslm compare`: measure strategies on a facts set and a general-knowledge set."""

from __future__ import annotations

import re
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .. import registry
from ..errors import InputError
from ..models import DEFAULT_MODEL
from ..options import parse_key_values
from .app import DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, OptionsOpt, app, check_strategy
from .output import count, emit_json, err, out
from .progress import Reporter


class Mode(str, Enum):
    sequential = "sequential"
    independent = "independent"


FactsArg = Annotated[Optional[Path], typer.Argument(help="Facts set (JSONL: id, title, document, qa); default: the bundled dev set.", show_default=False)]
GeneralOpt = Annotated[Optional[Path], typer.Option("--general", help="General-knowledge set (JSONL: id, question, answers) for forgetting; default: the bundled dev set.", show_default=False)]
DocsOpt = Annotated[Optional[int], typer.Option("--docs", min=1, help="Use only the first N documents.", show_default=False)]
GeneralQuestionsOpt = Annotated[Optional[int], typer.Option("--general-questions", min=0, help="Use only the first N general questions (0 skips forgetting).", show_default=False)]
ModeOpt = Annotated[Mode, typer.Option("--mode", help="sequential: one session learns every document, then answers; independent: a fresh session per document.")]
StrategyOpt = Annotated[Optional[str], typer.Option("--strategy", callback=check_strategy, help="Strategy to benchmark (default ttt): " + ", ".join(registry.names()) + ".", show_default=False)]
MaxTokensOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest answer to a facts question (greedy).")]
GeneralTokensOpt = Annotated[int, typer.Option("--general-max-new-tokens", min=1, help="Longest answer to a general question.")]


@app.command()
def bench(
    facts: FactsArg = None,
    *,
    general: GeneralOpt = None,
    strategy: StrategyOpt = None,
    model: ModelOpt = None,
    option: OptionsOpt = None,
    docs: DocsOpt = None,
    general_questions: GeneralQuestionsOpt = None,
    mode: ModeOpt = Mode.sequential,
    max_new_tokens: MaxTokensOpt = 40,
    general_max_new_tokens: GeneralTokensOpt = 24,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: JsonOpt = False,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Also write DIR/result.json and DIR/questions.csv (every question's three answers).", show_default=False)] = None,
) -> None:
    """Measure one strategy: accuracy base / in context / learned, forgetting, retention, time and memory."""
    from ..bench import run_bench
    from ..bench_results import BenchSettings
    from ..bench_report import write_outputs

    facts_set, general_set = _load_sets(facts, general, docs, general_questions)
    settings = BenchSettings(model or DEFAULT_MODEL, mode.value, max_new_tokens, general_max_new_tokens, device, dtype)
    with Reporter(err, transient=True) as reporter:
        result = run_bench(strategy or "ttt", facts_set, general_set, settings, parse_key_values(option), progress=reporter.update)
    written = write_outputs(out_dir, result) if out_dir is not None else []
    if as_json:
        emit_json(asdict(result))
        return
    _print_bench(result)
    for path in written:
        out.line(f"wrote {path}")


@app.command()
def compare(
    facts: FactsArg = None,
    *,
    strategies: Annotated[str, typer.Option("--strategies", help="Comma-separated strategy names, e.g. ttt,jitrl-mvp,ace; a variant with its own options: ttt\\[neurons=0,questions=0].", show_default=False)],
    general: GeneralOpt = None,
    model: ModelOpt = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", metavar="[STRATEGY.]KEY=VALUE", help="Strategy hyperparameter, for every strategy or one (ttt.epochs=5); repeatable. `clslm strategies NAME` lists them.")] = None,
    docs: DocsOpt = None,
    general_questions: GeneralQuestionsOpt = None,
    mode: ModeOpt = Mode.sequential,
    max_new_tokens: MaxTokensOpt = 40,
    general_max_new_tokens: GeneralTokensOpt = 24,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    as_json: JsonOpt = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw accuracy, forgetting and learn time to this PNG.", show_default=False)] = None,
    as_markdown: Annotated[bool, typer.Option("--markdown", help="Print the table as Markdown (for docs/benchmarks.md).")] = False,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Also write DIR/compare.json, DIR/compare.md and DIR/STRATEGY/questions.csv.", show_default=False)] = None,
) -> None:
    """Benchmark several strategies on the same documents, questions and model; one table."""
    from ..bench import run_compare
    from ..bench_results import BenchSettings
    from ..bench_report import markdown, table_rows, write_comparison

    names = _strategy_list(strategies)
    if plot is not None and not plot.parent.is_dir():
        raise InputError(f"--plot {plot}: no such directory {plot.parent}")
    facts_set, general_set = _load_sets(facts, general, docs, general_questions)
    settings = BenchSettings(model or DEFAULT_MODEL, mode.value, max_new_tokens, general_max_new_tokens, device, dtype)
    with Reporter(err, transient=True) as reporter:
        comparison = run_compare(names, facts_set, general_set, settings, _scoped_options(option, names), progress=reporter.update)
    rows = table_rows(comparison.reference, comparison.strategies)
    if plot is not None:
        _plot(plot, comparison)
        err.line(f"wrote {plot}")
    facts_info = dict(model=comparison.model, mode=comparison.mode, docs=comparison.docs, questions=comparison.questions)
    table_md = markdown(rows, **facts_info, general_questions=len(general_set), machine=comparison.machine)
    if out_dir is not None:
        for path in write_comparison(out_dir, comparison, table_md):
            err.line(f"wrote {path}")
    if as_json:
        emit_json(asdict(comparison))
    elif as_markdown:
        out.line(table_md)
    else:
        out.print(_table(rows))  # in a pipe (logs, CI) every column stays on one line
        out.print(f"[dim]{count(comparison.docs, 'document')}, {count(comparison.questions, 'question')}, {count(len(general_set), 'general question')}, model {comparison.model}, {comparison.mode}[/dim]", highlight=False)


def _load_sets(facts: Path | None, general: Path | None, docs: int | None, general_questions: int | None):
    from ..benchdata import load_facts, load_general

    facts_set = load_facts(facts)[:docs]
    general_set = load_general(general)[:general_questions] if general_questions != 0 else []
    return facts_set, general_set


def _strategy_list(text: str) -> list[str]:
    """Comma-separated names or variants (ttt[neurons=0,questions=0]: commas inside brackets stay)."""
    from ..bench import variant

    labels = list(dict.fromkeys(p.strip() for p in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", text) if p.strip()))
    unknown = [label for label in labels if variant(label)[0] not in registry.names()]
    if not labels or unknown:
        raise typer.BadParameter(f"unknown strategy {', '.join(map(repr, unknown)) or '(none given)'}; choose from: {', '.join(registry.names())}", param_hint="--strategies")
    return labels


def _scoped_options(items: list[str] | None, labels: list[str]) -> dict[str, dict[str, str]]:
    """-o KEY=VALUE goes to every strategy, -o STRATEGY.KEY=VALUE to that one (and its variants)."""
    from ..bench import variant

    names = list(dict.fromkeys(variant(label)[0] for label in labels))
    options: dict[str, dict[str, str]] = {name: {} for name in names}
    for key, value in parse_key_values(items).items():
        scope, dot, name = key.rpartition(".")
        if dot and scope not in options:
            raise InputError(f"option {key}={value}: {scope!r} is not one of --strategies")
        for target in [scope] if dot else names:
            options[target][name] = value
    return options


def _plot(path: Path, comparison) -> None:
    from ..bench_report import plot

    title = f"{comparison.model}, {comparison.docs} documents ({comparison.questions} questions), {comparison.mode}"
    try:
        plot(path, comparison.reference, comparison.strategies, title=title)
    except OSError as e:
        raise InputError(f"--plot {path}: cannot write ({e.strerror or e})") from None


def _table(rows: list[list[str]]) -> Table:
    """The compare table; two-line headers keep it narrow."""
    from ..bench_report import COLUMNS

    table = Table(*(c.replace(" ", "\n", 1) for c in COLUMNS), box=None, header_style="bold")
    for column in table.columns[1:]:
        column.justify = "right"
    for row in rows:
        table.add_row(*map(escape, row))  # a variant label, ttt[neurons=0], is not markup
    return table


def _print_bench(r) -> None:
    """A short table (accuracy, strict accuracy and F1 of base / in context / learned), then one line per theme."""
    from ..bench_report import DASH, num

    options = f" ({', '.join(f'{k}={v}' for k, v in r.options.items())})" if r.options else ""
    out.print(f"[bold]{escape(r.strategy)}[/bold]{escape(options)} · {r.mode} · {count(r.docs, 'document')}, {count(r.questions, 'question')} · model {r.model}", highlight=False)
    table = Table("", "accuracy", "strict", "F1", box=None, header_style="bold")
    for column in table.columns[1:]:
        column.justify = "right"
    for key in ("base", "in_context", "learned"):
        table.add_row(key, num(r.accuracy[key]), num(r.strict_accuracy[key]), num(r.f1[key]))
    out.print(table)
    kept = r.retention
    after_all = f" → {num(kept['first_doc_after_all'])} after all" if kept["first_doc_after_all"] is not None else ""
    g = r.general
    general = f"{g['questions']} questions: accuracy {num(g['before'])} → {num(g['after'])}, answer NLL {num(g['nll_before'])} → {num(g['nll_after'])}"
    rss = f" · peak RSS {r.peak_rss_mb:.0f} MB" if r.peak_rss_mb is not None else ""
    lines = {
        "gain recovery": num(r.gain_recovery),
        "retention": f"doc 1: {num(kept['first_doc_right_after'])} right after{after_all}",
        "general": general if g["questions"] else DASH,
        "forgetting": num(r.forgetting),
        "time": f"learn {r.learn_seconds:.1f} s ({r.learn_seconds_per_1k_tokens:.2f} s/1k tokens) · ask {r.ask_seconds_mean:.2f} s/question",
        "memory": f"state {r.state_mb_per_doc:.3f} MB/doc{rss}",
    }
    for key, text in lines.items():
        out.print(f" {key:<14} {text}", highlight=False)
