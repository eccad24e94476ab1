"""Documents one at a time (issue 23, item 2): `clslm forget`, `clslm docs`, re-learning skipped.

Every strategy, on the tiny random Llama: learn two documents, forget the first. Its share of the state is
gone (the state equals that of a session that learned only the second, where the strategy's state does
not depend on the order of learning), the second document's answers are unchanged (where questions are
routed to their documents), and forgetting the only document left answers exactly like the base model.
"""

from __future__ import annotations

import json

import pytest

from clslm import registry
from clslm.documents import Document
from clslm.errors import InputError
from clslm.session import MANIFEST, Session
from clslm.strategies import llm_client

from conftest import DOCUMENT, fast_options, snapshot
from test_cli import check_failure, run, run_json

ROWING = "Ulla Brenning founded the Tamsford Rowing Club in 1911. The club rows on the Orle estuary every spring."
A, B = Document("kessenbrock.txt", DOCUMENT), Document("rowing.txt", ROWING)
QUESTIONS = ["Who built the Kessenbrock Light?", "Who founded the Tamsford Rowing Club?"]
BULLETS = {A.sha256: "The Kessenbrock Light was built by Adelmar Fosk.", B.sha256: "Ulla Brenning founded the Tamsford Rowing Club."}
# The state after forgetting the first document is the state of learning only the second (both learned alone).
ORDER_FREE = {"ttt", "jitrl-mvp", "jitrl-full", "ace"}
# What they learned acts on every question (no per-document routing), so forgetting one document may change
# the others' answers: jitrl-full's store is searched whole, ttt-linear's fast weights are one sum.
UNROUTED = {"jitrl-full", "ttt-linear"}


class ScriptedCurator(llm_client.LLMClient):
    """ace's roles: drafts, then one missing fact, then a delta adding that document's bullet."""

    label = "scripted"

    def chat(self, messages, *, schema=None):
        text = messages[-1]["content"]
        fact = next(bullet for sha, bullet in BULLETS.items() if ("Kessenbrock" in text) == ("Kessenbrock" in bullet))
        if schema is None:
            return "Q: Who? A: unknown"
        if "missing" in schema["properties"]:
            return json.dumps({"missing": [fact], "wrong": []})
        return json.dumps({"operations": [{"op": "add", "id": "", "text": fact}]})


@pytest.fixture(autouse=True)
def scripted_ace(monkeypatch):
    from clslm.strategies.ace import strategy as ace

    monkeypatch.setattr(llm_client, "_tiktoken", lambda: None)
    monkeypatch.setattr(ace, "make_client", lambda config, model, tokenizer: ScriptedCurator())


def learned(path, llama_dir, strategy: str, documents: list[Document]) -> None:
    with Session.create(path, model=str(llama_dir), strategy=strategy, options=fast_options(strategy), device="cpu") as s:
        s.learn(documents)


def answers(path, deltas: bool = True) -> list[str]:
    with Session.open(path, device="cpu") as s:
        return [s.ask(q, deltas=deltas, max_new_tokens=6).text for q in QUESTIONS]


def described(path) -> dict:
    with Session.open(path, device="cpu") as s:
        return s.strategy().describe()


@pytest.mark.parametrize("strategy", sorted(registry.BUILTIN))
def test_forget_one_document_then_the_last(strategy, tmp_path, llama_dir):
    path = tmp_path / "s"
    learned(path, llama_dir, strategy, [A, B])
    before = answers(path)
    with Session.open(path, device="cpu") as s:
        [record] = s.forget("kessenbrock.txt")
    assert record["sha256"] == A.sha256
    assert [d["name"] for d in json.loads((path / MANIFEST).read_text())["documents"]] == ["rowing.txt"]
    if strategy not in UNROUTED:
        assert answers(path)[1] == before[1]
    only_b = tmp_path / "only-b"
    learned(only_b, llama_dir, strategy, [B])
    if strategy in ORDER_FREE:
        assert described(path) == described(only_b)
        assert answers(path) == answers(only_b)
    else:
        assert described(path)["documents"] == 1

    with Session.open(path, device="cpu") as s:
        s.forget(B.sha256[:8])
    assert answers(path) == answers(path, deltas=False)
    state = json.loads((path / MANIFEST).read_text())["state"]
    assert state["tensors"] is None
    if state["extra"]:  # ace keeps its (empty) playbook's id counter
        assert json.loads((path / state["extra"]["file"]).read_text())["playbook"]["bullets"] == []


def test_ttt_linear_keeps_each_documents_change(tmp_path, llama_dir):
    path = tmp_path / "s"
    learned(path, llama_dir, "ttt-linear", [A, B])
    with Session.open(path, device="cpu") as s:
        strategy = s.strategy()
        change_b = [w.clone() for w in strategy.changes[1]]
        s.forget(A.sha256)
    with Session.open(path, device="cpu") as s:
        strategy = s.strategy()
        assert len(strategy.router) == len(strategy.changes) == 1
        for layer, change in zip(strategy.fast_layers(), change_b):
            assert (layer.fast_weight == change).all()


def test_find_by_name_or_hash(tmp_path, llama_dir):
    path = tmp_path / "s"
    learned(path, llama_dir, "jitrl-mvp", [A, B, Document("again.txt", DOCUMENT)])
    with Session.open(path, device="cpu") as s:
        with pytest.raises(InputError, match="no document 'nope'"):
            s.forget("nope")
        with pytest.raises(InputError, match="no document"):
            s.forget("abc")  # under 4 characters is never a hash
        forgotten = s.forget(A.sha256[:6])  # every copy of that content
    assert [d["name"] for d in forgotten] == ["kessenbrock.txt", "again.txt"]


def test_a_failed_forget_leaves_the_session_as_it_was(tmp_path, llama_dir, monkeypatch):
    path = tmp_path / "s"
    learned(path, llama_dir, "ttt", [A, B])
    before = snapshot(path)

    def broken(self):
        raise OSError("disk full")

    monkeypatch.setattr(Session, "save", broken)
    with Session.open(path, device="cpu") as s:
        with pytest.raises(OSError):
            s.forget("rowing.txt")
        assert [d["name"] for d in s.documents] == ["kessenbrock.txt", "rowing.txt"]
    assert snapshot(path) == before


# ---- the command line ---------------------------------------------------------------------------------


def test_cli_docs_forget_and_relearning(capfd, tmp_path, llama_dir):
    path, doc = tmp_path / "s", tmp_path / ("a-long-document-name-" * 6 + ".txt")
    doc.write_text(DOCUMENT, encoding="utf-8")
    other = tmp_path / "rowing.txt"
    other.write_text(ROWING, encoding="utf-8")
    common = ["-s", path, "--device", "cpu"]
    run_json(capfd, "learn", doc, other, *common, "--model", llama_dir, "--strategy", "jitrl-mvp")

    listed = run_json(capfd, "docs", "-s", path)["documents"]
    assert [d["name"] for d in listed] == [str(doc), str(other)]
    assert {"sha256", "tokens", "characters", "learned_at"} <= set(listed[0]) and listed[0]["characters"] == len(DOCUMENT)
    code, out, _ = run(capfd, "docs", "-s", path)
    assert code == 0 and any(line.endswith(str(doc)) and listed[0]["sha256"][:12] in line for line in out.splitlines())

    code, out, err = run(capfd, "learn", doc, *common)  # the same content again: skipped, with a note
    assert code == 0 and "already learned" in err and "--again" in err
    assert len(run_json(capfd, "docs", "-s", path)["documents"]) == 2
    again = run_json(capfd, "learn", doc, *common, "--again")
    assert len(again["documents"]) == 1 and len(run_json(capfd, "docs", "-s", path)["documents"]) == 3

    result = run_json(capfd, "forget", listed[0]["sha256"][:10], *common)
    assert [d["name"] for d in result["forgotten"]] == [str(doc), str(doc)] and result["documents"] == 1
    code, out, _ = run(capfd, "forget", other, *common)
    assert code == 0 and f"forgot {other}" in out and "0 document(s) left" in out


def test_cli_forget_errors(capfd, tmp_path, llama_dir):
    path = tmp_path / "s"
    learned(path, llama_dir, "jitrl-mvp", [A])
    check_failure(capfd, ["forget", "nothing.txt", "-s", path, "--device", "cpu"], 3, "no document 'nothing.txt'", path)
    check_failure(capfd, ["forget", "x", "-s", tmp_path / "none"], 4, "no session here", tmp_path / "none")
    with Session.open(path):
        check_failure(capfd, ["forget", "kessenbrock.txt", "-s", path], 4, "session busy", path)


# ---- changing strategy, asking an empty session (issue 23, item 3) ---------------------------------------


def test_reset_strategy_switches_and_the_hint_names_it(capfd, tmp_path, llama_dir, doc_file):
    path = tmp_path / "s"
    learned(path, llama_dir, "ttt", [A])
    common = ["-s", path, "--device", "cpu"]
    line = check_failure(capfd, ["learn", doc_file, *common, "--strategy", "jitrl-mvp"], 4, "uses strategy 'ttt', not 'jitrl-mvp'", path)
    assert f"clslm reset --strategy jitrl-mvp -s {path}" in line
    result = run_json(capfd, "reset", "--yes", "--strategy", "jitrl-mvp", "-o", "k=2", "-s", path)
    assert result == {"session": str(path), "forgotten_documents": 1, "strategy": "jitrl-mvp"}
    data = json.loads((path / MANIFEST).read_text())
    assert data["strategy"]["name"] == "jitrl-mvp" and data["strategy"]["config"]["k"] == 2 and data["documents"] == []
    learned_now = run_json(capfd, "learn", doc_file, *common, "--strategy", "jitrl-mvp")  # the hint's command works
    assert learned_now["strategy"] == "jitrl-mvp" and len(learned_now["documents"]) == 1


def test_an_empty_session_takes_another_strategy_at_its_next_learn(capfd, tmp_path, llama_dir, doc_file):
    path = tmp_path / "s"
    learned(path, llama_dir, "ttt", [A])
    run_json(capfd, "reset", "--yes", "-s", path)
    result = run_json(capfd, "learn", doc_file, "-s", path, "--device", "cpu", "--strategy", "jitrl-full")
    assert result["strategy"] == "jitrl-full" and json.loads((path / MANIFEST).read_text())["strategy"]["name"] == "jitrl-full"


def test_asking_an_empty_session_says_so(capfd, tmp_path, llama_dir):
    path = tmp_path / "s"
    learned(path, llama_dir, "ttt", [A])
    run_json(capfd, "reset", "--yes", "-s", path)
    code, out, err = run(capfd, "ask", QUESTIONS[0], "-s", path, "--device", "cpu", "--max-new-tokens", "3", "--json")
    assert code == 0 and json.loads(out)["deltas"] is True
    assert "nothing learned" in err and "base model's answer" in err
    code, _, err = run(capfd, "ask", QUESTIONS[0], "-s", path, "--device", "cpu", "--max-new-tokens", "3", "--no-deltas")
    assert code == 0 and "nothing learned" not in err
