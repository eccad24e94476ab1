"""`make demo`: learn the bundled two-page PDF report with ttt, then ask its questions, base vs learned.

Each step is a separate `clslm` process, as a user would run it: the answers come from the saved
session (one fresh process loads the model and the saved deltas once and answers every question), with
only the question in the prompt. The report (data/sample-report.pdf, about 1,500 tokens)
is made from data/sample-report.md by data/make_sample_pdf.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from importlib.resources import as_file, files
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .scoring import contains_answer

SESSION = Path("sessions") / "demo"
MAX_NEW_TOKENS = "40"  # as `clslm bench` answers: one sentence, and a runaway recitation stops sooner


def clslm(*args: str) -> list[dict]:
    """The command's JSON lines (one object; `ask` with several questions writes one per question)."""
    result = subprocess.run([sys.executable, "-m", "clslm", *args, "--json"], stdout=subprocess.PIPE, text=True)
    if result.returncode:
        raise SystemExit(result.returncode)
    return [json.loads(line) for line in result.stdout.splitlines()]


def main() -> None:
    console = Console()
    questions = json.loads(files("clslm").joinpath("data/sample-report-questions.json").read_text(encoding="utf-8"))
    start = time.perf_counter()
    with as_file(files("clslm").joinpath("data/sample-report.pdf")) as sample:
        console.print(f"[bold]1. clslm learn {sample.name} --strategy ttt[/bold] (session {SESSION})")
        clslm("reset", "--yes", "-s", str(SESSION)) if (SESSION / "session.json").exists() else None
        [learned] = clslm("learn", str(sample), "--strategy", "ttt", "-s", str(SESSION))
    doc = learned["documents"][0]
    console.print(f"   {doc['tokens']} tokens in {doc['extra'].get('parts', 1)} parts, loss {doc['loss_before']:.2f} → {doc['loss_after']:.2f}, {doc['seconds']:.0f} s, state {learned['state_bytes'] / 1e6:.1f} MB")
    console.print("[bold]2. clslm ask QUESTION... --compare-base[/bold] (a fresh process; only the question is in the prompt)")
    table = Table("question", "base model", "after learning", "prompt tokens", show_lines=True)
    right = {"base": 0, "learned": 0}
    answers = clslm("ask", *[qa["question"] for qa in questions], "--compare-base", "--max-new-tokens", MAX_NEW_TOKENS, "-s", str(SESSION))
    for qa, answer in zip(questions, answers):
        right["base"] += contains_answer(answer["base_answer"], qa["answers"])
        right["learned"] += contains_answer(answer["answer"], qa["answers"])
        table.add_row(qa["question"], answer["base_answer"], answer["answer"], str(answer["prompt_tokens"]))
    console.print(table)
    n = len(questions)
    console.print(f"right: base model {right['base']}/{n}, after learning {right['learned']}/{n}; whole demo {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
