"""ttt on the real default model (SmolLM2-135M): it must learn a document, and not forget much else.

Slow (minutes on 2 CPU cores): run with `make test-slow`. The document is learned through the console
script in one process; each question is asked in a new process, as a user would.
"""

from __future__ import annotations

import json
import os
import re
import string
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path

import pytest

from conftest import USER_CLSLM_HOME

FACTS_ID = "dev-01"
GENERAL_QUESTIONS = 30
MAX_NEW_TOKENS = 40  # as `clslm bench`: a 32-token answer can stop before the fact
GENERAL_MAX_NEW_TOKENS = 24


def normalize(text: str) -> str:
    """SQuAD-style: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(" " if c in string.punctuation else c for c in text)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def contains_answer(prediction: str, answers: list[str]) -> bool:
    pred = f" {normalize(prediction)} "
    return any(f" {normalize(a)} " in pred for a in answers if normalize(a))


def test_normalize_and_contains():
    """The scorer itself (fast: runs in `make test`)."""
    assert normalize("The  Morwenna Blythe!") == "morwenna blythe"
    assert contains_answer("It was finished in 1793.", ["1793"])
    assert contains_answer("Adelmar Fosk, an engineer", ["Fosk"])
    assert not contains_answer("It was finished in 17930.", ["1793"])
    assert not contains_answer("I don't know.", ["214", "214 steps"])


def read_jsonl(name: str) -> list[dict]:
    text = files("clslm").joinpath(f"data/{name}").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def clslm_command() -> list[str]:
    script = Path(sys.executable).parent / "clslm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "clslm"]


@pytest.fixture
def real_env(monkeypatch) -> dict[str, str]:
    """The user's cache (the GGUF conversion and calibration are reused), all cores, no test overrides."""
    if USER_CLSLM_HOME is None:
        monkeypatch.delenv("CLSLM_HOME", raising=False)
    else:
        monkeypatch.setenv("CLSLM_HOME", USER_CLSLM_HOME)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLSLM_") and k != "OMP_NUM_THREADS"}
    if USER_CLSLM_HOME is not None:
        env["CLSLM_HOME"] = USER_CLSLM_HOME
    return env


@pytest.mark.slow
def test_ttt_learns_a_document_and_keeps_general_knowledge(tmp_path, real_env, capsys):
    import torch

    record = next(r for r in read_jsonl("facts-dev.jsonl") if r["id"] == FACTS_ID)
    document = tmp_path / f"{FACTS_ID}.txt"
    document.write_text(record["document"], encoding="utf-8")
    session = tmp_path / "session"

    start = time.perf_counter()
    learn = subprocess.run(
        [*clslm_command(), "learn", str(document), "-s", str(session), "--strategy", "ttt", "--device", "cpu", "--json"],
        capture_output=True,
        text=True,
        env=real_env,
        timeout=1800,
    )
    learn_seconds = time.perf_counter() - start
    assert learn.returncode == 0, learn.stderr
    learned = json.loads(learn.stdout)
    assert learned["strategy"] == "ttt" and learned["documents"][0]["loss_after"] < learned["documents"][0]["loss_before"]

    rows = []
    for qa in record["qa"]:
        ask = subprocess.run(
            [*clslm_command(), "ask", qa["question"], "-s", str(session), "--device", "cpu", "--compare-base", "--json", "--max-new-tokens", str(MAX_NEW_TOKENS)],
            capture_output=True,
            text=True,
            env=real_env,
            timeout=600,
        )
        assert ask.returncode == 0, ask.stderr
        result = json.loads(ask.stdout)
        assert result["context_tokens"] == 0 and result["deltas"] is True
        rows.append((qa, result["answer"], result["base_answer"]))
    learned_hits = sum(contains_answer(answer, qa["answers"]) for qa, answer, _ in rows)
    base_hits = sum(contains_answer(base, qa["answers"]) for qa, _, base in rows)

    # General knowledge: the first 30 general questions, with and without deltas, in this process.
    from clslm.session import Session

    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        general = read_jsonl("general-dev.jsonl")[:GENERAL_QUESTIONS]
        start = time.perf_counter()
        with Session.open(session, device="cpu") as s:
            with_deltas = sum(contains_answer(s.ask(g["question"], max_new_tokens=GENERAL_MAX_NEW_TOKENS).text, g["answers"]) for g in general)
            without = sum(
                contains_answer(s.ask(g["question"], deltas=False, max_new_tokens=GENERAL_MAX_NEW_TOKENS).text, g["answers"]) for g in general
            )
        general_seconds = time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)

    with capsys.disabled():
        print(f"\nttt on {FACTS_ID}: learned {learned_hits}/8, base {base_hits}/8, learn {learn_seconds:.0f} s")
        print(f"general-dev[:{GENERAL_QUESTIONS}]: {with_deltas}/{GENERAL_QUESTIONS} with deltas, {without}/{GENERAL_QUESTIONS} without ({general_seconds:.0f} s)")
        for qa, answer, base in rows:
            print(f"  {qa['question']}\n    learned: {answer!r}\n    base:    {base!r}")

    assert learned_hits >= 4, f"ttt answered only {learned_hits}/8 questions about {FACTS_ID} (base {base_hits}/8)"
    assert base_hits <= 1, f"the base model already answers {base_hits}/8: the document is not new to it"
    assert with_deltas >= 0.9 * without, f"general accuracy fell from {without} to {with_deltas} of {GENERAL_QUESTIONS} (> 10% relative)"
