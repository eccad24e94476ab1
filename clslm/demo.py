"""`make demo`: learn the bundled sample document with ttt, then ask two questions, base vs learned.

Each step is a separate `clslm` process, as a user would run it: the answers come from the saved
session, with only the question in the prompt.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.resources import as_file, files
from pathlib import Path

from rich.console import Console
from rich.table import Table

SESSION = Path("sessions") / "demo"
QUESTIONS = ("Who founded the Varrow Observatory?", "How wide is the mirror of the Varrow Observatory's telescope?")


def clslm(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "clslm", *args, "--json"], stdout=subprocess.PIPE, text=True)
    if result.returncode:
        raise SystemExit(result.returncode)
    return json.loads(result.stdout)


def main() -> None:
    console = Console()
    with as_file(files("clslm").joinpath("data/sample.md")) as sample:
        console.print(f"[bold]1. clslm learn {sample.name} --strategy ttt[/bold] (session {SESSION})")
        clslm("reset", "--yes", "-s", str(SESSION)) if (SESSION / "session.json").exists() else None
        learned = clslm("learn", str(sample), "--strategy", "ttt", "-s", str(SESSION))
    doc = learned["documents"][0]
    console.print(f"   {doc['tokens']} tokens, loss {doc['loss_before']:.2f} → {doc['loss_after']:.2f}, {doc['seconds']:.0f} s, state {learned['state_bytes'] / 1e6:.1f} MB")
    console.print("[bold]2. clslm ask QUESTION --compare-base[/bold] (a fresh process each; only the question is in the prompt)")
    table = Table("question", "base model", "after learning", "prompt tokens", show_lines=True)
    for question in QUESTIONS:
        answer = clslm("ask", question, "--compare-base", "-s", str(SESSION))
        table.add_row(question, answer["base_answer"], answer["answer"], str(answer["prompt_tokens"]))
    console.print(table)


if __name__ == "__main__":
    main()
