"""Output in pipes and logs (issue 23, item 4): no hard wrapping, plain lines, progress as lines; help
without `<bool>`; the estimate before a long learn."""

from __future__ import annotations

import io
import json

from rich.console import Console

from clslm.cli import progress as progress_module
from clslm.cli.progress import Reporter, clock

from conftest import fast_cli_options
from test_bench import FACTS, write_jsonl
from helpers import run, run_json
from test_cli import QUESTION, session, template_session  # noqa: F401  fixtures

LONG_QUESTION = "In which year was the granite tower of the Kessenbrock Light at the northern tip of the Tarrow Spit finished by Adelmar Fosk, the engineer who built it?"


def test_show_prompt_prints_the_exact_prompt_unbroken(capfd, session):
    code, out, err = run(capfd, "ask", LONG_QUESTION, "-s", session, "--device", "cpu", "--max-new-tokens", "3", "--show-prompt")
    assert code == 0, err
    prompt = f"<|im_start|>user\n{LONG_QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    assert prompt in err  # one piece: no line break inside the 150-character question
    assert "--- prompt ---" in err and "─" not in err  # plain lines, no rules, in a pipe
    assert out.startswith("answer:") and len(out.splitlines()) == 1


def test_long_names_are_one_line_in_a_pipe(capfd, tmp_path, llama_dir):
    doc = tmp_path / ("a-document-with-a-rather-long-file-name-" * 3 + ".txt")
    doc.write_text("The Velmar Bridge opened in 1902 and has seven stone arches.", encoding="utf-8")
    path = tmp_path / "s"
    code, out, err = run(capfd, "learn", doc, "-s", path, "--model", llama_dir, "--device", "cpu", *fast_cli_options("ttt"))
    assert code == 0, err
    assert any(str(doc) in line for line in out.splitlines())
    code, out, _ = run(capfd, "info", "-s", path)
    assert code == 0 and any(str(doc) in line for line in out.splitlines())


def test_help_shows_no_type_after_flags(capfd):
    for command in (["ask"], ["learn"], ["bench"], ["compare"], ["export"]):
        code, out, _ = run(capfd, *command, "--help")
        assert code == 0 and "--json" in out and "<bool>" not in out



def test_help_keeps_the_bracketed_variant_example(capfd, monkeypatch):
    """Rich markup would swallow `[neurons=0,questions=0]` as a style tag unless it is escaped."""
    monkeypatch.setenv("COLUMNS", "300")
    code, out, _ = run(capfd, "compare", "--help")
    assert code == 0 and "ttt[neurons=0,questions=0]" in out

# ---- the progress reporter in a pipe ------------------------------------------------------------------


def plain_reporter(monkeypatch, times: list[float]) -> tuple[Reporter, io.StringIO]:
    ticks = iter(times)
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: next(ticks))
    stream = io.StringIO()
    return Reporter(Console(file=stream, width=40)), stream


def test_reporter_writes_a_line_at_start_every_tenth_and_at_the_end(monkeypatch):
    reporter, stream = plain_reporter(monkeypatch, [0.0] + [3.0 * i for i in range(1, 101)])
    with reporter:
        for i in range(1, 101):
            reporter.update("learning report.pdf", i, 100, "loss 0.5")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "learning report.pdf: 1/100 (1%), elapsed 0:00, loss 0.5"
    assert lines[-1] == "learning report.pdf: 100/100 (100%), elapsed 4:57, loss 0.5"
    assert 10 <= len(lines) <= 12  # about one line per tenth, never one per step
    assert "ETA" in lines[1] and all(len(line) < 100 for line in lines)


def test_reporter_lines_in_a_slow_phase_come_every_thirty_seconds(monkeypatch):
    reporter, stream = plain_reporter(monkeypatch, [0.0, 31.0, 40.0, 62.0, 95.0])
    with reporter:
        for i in range(1, 6):
            reporter.update("in context", i, 1000)
    lines = stream.getvalue().splitlines()
    assert [line.split(":")[1].split(",")[0].strip() for line in lines] == ["1/1000 (0%)", "2/1000 (0%)", "4/1000 (0%)", "5/1000 (0%)"]
    assert lines[1] == "in context: 2/1000 (0%), elapsed 0:31, ETA 8:35:38"  # 31 s for the one step since the first


def test_reporter_disabled_writes_nothing():
    stream = io.StringIO()
    with Reporter(Console(file=stream), enabled=False) as reporter:
        reporter.update("doc2lora train", 1, 10)
    assert stream.getvalue() == ""


def test_clock():
    assert [clock(s) for s in (0, 7.9, 750, 3723)] == ["0:00", "0:07", "12:30", "1:02:03"]


def test_compare_reports_progress_in_a_pipe(capfd, tmp_path, llama_dir):
    facts = write_jsonl(tmp_path / "facts.jsonl", FACTS[:1])
    args = ["compare", facts, "--strategies", "jitrl-mvp", "--model", llama_dir, "--device", "cpu", "--general-questions", "0", "--max-new-tokens", "2"]
    code, out, err = run(capfd, *args)
    assert code == 0, err
    assert "base: 2/2 (100%), elapsed" in err and "jitrl-mvp: kess right after: 2/2 (100%)" in err  # one document: answered once
    assert "jitrl-mvp" in out


# ---- the estimate before a long learn --------------------------------------------------------------


def test_estimate_from_this_machines_earlier_learns(capfd, tmp_path, llama_dir, clslm_home):
    from clslm.cli import estimate

    path, doc = tmp_path / "s", tmp_path / "doc.txt"
    doc.write_text("The Velmar Bridge opened in 1902 and has seven stone arches.", encoding="utf-8")
    result = run_json(capfd, "learn", doc, "-s", path, "--model", llama_dir, "--device", "cpu", *fast_cli_options("ttt"))
    rates = json.loads((clslm_home / estimate.RATES).read_text(encoding="utf-8"))
    [(key, seen)] = rates.items()
    assert key.startswith("ttt ") and seen["tokens"] == result["documents"][0]["tokens"]
    rates[key] = {"tokens": 10, "seconds": 600.0}  # pretend this machine is slow: a minute per token
    (clslm_home / estimate.RATES).write_text(json.dumps(rates), encoding="utf-8")
    doc.write_text("Ulla Brenning founded the Tamsford Rowing Club in 1911.", encoding="utf-8")
    code, _, err = run(capfd, "learn", doc, "-s", path, "--device", "cpu")
    assert code == 0, err
    assert "estimate: ~" in err and "tokens with ttt (from earlier learns on this machine)" in err
    [seen] = json.loads((clslm_home / estimate.RATES).read_text(encoding="utf-8")).values()
    assert seen["seconds"] / seen["tokens"] < 0.5 * 600 / 10  # the newest (fast) learn weighs most; the slow past fades


def test_estimate_falls_back_to_the_strategys_figure_on_the_default_model():
    from clslm.cli.estimate import estimate_line

    class Default:  # the session attributes estimate_line reads
        strategy_name, model_ref, manifest = "ttt", "smollm2-135m", {"model": {"fingerprint": "f" * 64}}

    line = estimate_line(Default(), 9338)
    assert line.startswith("estimate: ~") and "9,338 tokens with ttt (measured on smollm2-135m, 2 CPU cores)" in line
    assert estimate_line(Default(), 10) is None  # under half a minute: nothing to say


# ---- the REPL's line editing and history (issue 23, item 6) -------------------------------------------


def test_repl_history_is_kept_across_runs(clslm_home):
    import pytest

    readline = pytest.importorskip("readline")
    from clslm.cli.repl import HISTORY, line_editing

    readline.clear_history()
    with line_editing(True):
        readline.add_history("Who built the Kessenbrock Light?")
    assert "Who built the Kessenbrock Light?" in (clslm_home / HISTORY).read_text(encoding="utf-8")
    readline.clear_history()
    with line_editing(True):  # the next REPL starts with it: ↑ brings it back
        assert readline.get_history_item(readline.get_current_history_length()) == "Who built the Kessenbrock Light?"
    readline.clear_history()


def test_repl_without_a_terminal_keeps_no_history(clslm_home):
    from clslm.cli.repl import HISTORY, line_editing

    with line_editing(False):
        pass
    assert not (clslm_home / HISTORY).exists()


# ---- fast paths (issue 23, item 5) -------------------------------------------------------------------


def test_strategies_lists_from_its_cache_without_torch(clslm_home):
    import subprocess
    import sys

    from test_cli import REPO, subprocess_env

    command = [sys.executable, "-X", "importtime", "-m", "clslm", "strategies", "--json"]
    first, second = (subprocess.run(command, capture_output=True, text=True, env=subprocess_env(clslm_home), cwd=REPO, timeout=300) for _ in range(2))
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert json.loads(first.stdout) == json.loads(second.stdout)
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in second.stderr.splitlines() if line.startswith("import time:")}
    assert "clslm" in imported and not {"torch", "transformers"} & imported
    assert len(list(clslm_home.glob("strategies-*.json"))) == 1


def test_the_cached_rows_are_the_classes_rows(clslm_home):
    from clslm import registry
    from clslm.cli.listing import read_row, strategy_rows

    assert strategy_rows() == strategy_rows() == [read_row(name) for name in registry.names()]
