"""Two `clslm` processes on one session: nothing is lost (issue 18).

A process reads the manifest, waits for the lock with --wait, and must then work on the session as the
holder left it, not as it was when it started waiting. Real processes on the tiny model, jitrl-mvp (no
training, so the time is torch's import).

Deterministic cases: the first process stops itself (SIGSTOP through CLSLM_TEST_CRASH_AT, see
clslm/atomic.py) just before it commits, holding the lock; the second starts, reads the old manifest and
blocks on the lock; then the first continues. Free races: both start at once, RUNS times
($CLSLM_TEST_CONCURRENCY_RUNS, default 2; `make fuzz` runs more).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from clslm.documents import read_documents
from clslm.session import MANIFEST, Session

from test_cli import subprocess_env
from test_crash import COMMAND, wait_until_blocked

A_TEXT = "The Kessenbrock Light was built by the engineer Adelmar Fosk and finished in 1793."
B_TEXT = "The Velmar Bridge crosses the river Oss at Brackley. It opened in 1902 and has seven stone arches."
RUNS = int(os.environ.get("CLSLM_TEST_CONCURRENCY_RUNS", "2"))

pytestmark = pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs Linux /proc to see a process wait")


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("concurrency-home")


@pytest.fixture
def docs(tmp_path) -> dict[str, Path]:
    (tmp_path / "a.txt").write_text(A_TEXT, encoding="utf-8")
    (tmp_path / "b.txt").write_text(B_TEXT, encoding="utf-8")
    return {"a": tmp_path / "a.txt", "b": tmp_path / "b.txt"}


def learn_command(session: Path, doc: Path, model: Path) -> list[str]:
    return [*COMMAND, "learn", str(doc), "-s", str(session), "--model", str(model), "--strategy", "jitrl-mvp", "--device", "cpu", "--wait", "120", "--json"]


def ask_command(session: Path) -> list[str]:
    return [*COMMAND, "ask", "Who built the Kessenbrock Light?", "-s", str(session), "--device", "cpu", "--max-new-tokens", "2", "--wait", "120", "--json"]


def start(command: list[str], home: Path, **env) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(home) | env)


def finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return json.loads(out)


def stopped(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until `proc` has stopped itself (state T in /proc/PID/stat)."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert proc.poll() is None, f"exited instead of stopping: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, "never reached the stop point"
        time.sleep(0.05)


def stop_before_commit(command: list[str], home: Path) -> subprocess.Popen:
    proc = start(command, home, CLSLM_TEST_CRASH_AT="before-replace:session.json", CLSLM_TEST_CRASH_SIGNAL="SIGSTOP")
    stopped(proc)
    return proc


def learned(session: Path) -> list[str]:
    manifest = json.loads((session / MANIFEST).read_text(encoding="utf-8"))
    return sorted(Path(d["name"]).name for d in manifest["documents"])


def test_a_second_learn_waiting_on_a_new_session_keeps_the_first_document(tmp_path, llama_dir, home, docs):
    session = tmp_path / "s"
    first = stop_before_commit(learn_command(session, docs["a"], llama_dir), home)  # holds the lock, not committed
    second = start(learn_command(session, docs["b"], llama_dir), home)  # finds no session: it would create one
    wait_until_blocked(second)
    os.kill(first.pid, signal.SIGCONT)
    finish(first), finish(second)
    assert learned(session) == ["a.txt", "b.txt"]


def learned_session(path: Path, model: Path, home: Path, doc: Path) -> Path:
    """A jitrl-mvp session that learned `doc`, made in this process (no torch import to wait for)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLSLM_HOME", str(home))
        with Session.create(path, model=str(model), strategy="jitrl-mvp", device="cpu") as s:
            s.learn(read_documents(doc))
    return path


def test_a_learn_and_an_ask_waiting_behind_a_learn_see_what_it_learned(tmp_path, llama_dir, home, docs):
    """Before the fix both exited 4, "state file missing": they loaded the state files of the manifest they
    read before waiting, which the holder's commit had pruned."""
    session = learned_session(tmp_path / "s", llama_dir, home, docs["a"])
    (tmp_path / "c.txt").write_text("Brackley lies on the river Oss, upstream of the old mill.", encoding="utf-8")
    holder = stop_before_commit(learn_command(session, tmp_path / "c.txt", llama_dir), home)
    waiters = [start(learn_command(session, docs["b"], llama_dir), home), start(ask_command(session), home)]
    wait_until_blocked(*waiters)
    os.kill(holder.pid, signal.SIGCONT)
    for proc in (holder, *waiters):
        finish(proc)
    assert learned(session) == ["a.txt", "b.txt", "c.txt"]


@pytest.mark.parametrize("run", range(RUNS))
def test_free_race_two_learners_and_an_asker(tmp_path, llama_dir, home, docs, run):
    """Two learners on a new session and an asker, all started at once: both documents every time."""
    session = tmp_path / "s"
    learners = [start(learn_command(session, docs[k], llama_dir), home) for k in ("a", "b")]
    time.sleep(0.5 * (run % 2))  # vary the asker's start: before or after the session exists
    asker = start(ask_command(session), home)
    for proc in learners:
        finish(proc)
    out, err = asker.communicate(timeout=300)
    # The asker may come before any session exists (exit 4, "no session here"); otherwise it answers.
    assert asker.returncode == 0 or (asker.returncode == 4 and "no session here" in err), err
    assert learned(session) == ["a.txt", "b.txt"]


# ---- the same rules in one process: what is read before the lock is read again under it ------------------


def test_a_session_created_meanwhile_is_opened_and_must_match(tmp_path, llama_dir, docs):
    from clslm.errors import SessionMismatch

    path = tmp_path / "s"
    first, second = (Session.open_or_create(path, model=str(llama_dir), strategy="jitrl-mvp", options=o, device="cpu") for o in ({}, {"k": "3"}))
    mismatched = Session.open_or_create(path, model=str(llama_dir), strategy="ttt", device="cpu")
    plain_create = Session.create(path, model=str(llama_dir), strategy="jitrl-mvp", device="cpu")
    with first:
        first.learn(read_documents(docs["a"]))
    with second:  # it found no session before the lock; under it, it opens the one `first` made
        second.learn(read_documents(docs["b"]))
    assert learned(path) == ["a.txt", "b.txt"]
    assert json.loads((path / MANIFEST).read_text())["strategy"]["config"]["k"] == 3  # its options applied to the open
    with pytest.raises(SessionMismatch, match="uses strategy 'jitrl-mvp', not 'ttt'"), mismatched:
        pass
    with pytest.raises(SessionMismatch, match="a session already exists here"), plain_create:
        pass
    assert learned(path) == ["a.txt", "b.txt"]


def test_a_session_removed_while_waiting_is_not_found(tmp_path, llama_dir, home, docs):
    import shutil

    from clslm.errors import SessionNotFound

    path = learned_session(tmp_path / "s", llama_dir, home, docs["a"])
    stale = Session.open(path, device="cpu")
    shutil.rmtree(path)
    with pytest.raises(SessionNotFound, match="no session here"), stale:
        pass
    assert not (path / MANIFEST).exists()


def test_info_reads_again_when_a_learn_commits_meanwhile(tmp_path, llama_dir, home, docs):
    """`info` takes no lock: when the state files its manifest names were pruned by a learn that committed
    meanwhile, it retries on the manifest as it is now (it said "state file missing")."""
    path = learned_session(tmp_path / "s", llama_dir, home, docs["a"])
    stale = Session.open(path)
    with Session.open(path, device="cpu") as s:
        s.learn(read_documents(docs["b"]))
    assert sorted(Path(d["name"]).name for d in stale.info()["documents"]) == ["a.txt", "b.txt"]


def test_a_waiter_whose_directory_was_removed_by_a_failed_first_learn_makes_it_again(tmp_path, llama_dir, docs):
    """A first learn that fails removes the directory it made (and its .lock); one waiting on that lock
    then takes a fresh one in a directory it makes again, instead of failing "cannot use this directory"."""
    import threading

    path = tmp_path / "s"
    first = Session.open_or_create(path, model=str(llama_dir), strategy="jitrl-mvp", device="cpu")
    second = Session.open_or_create(path, model=str(llama_dir), strategy="jitrl-mvp", device="cpu", wait=60)
    outcome = {}

    def wait_then_learn():
        try:
            with second:
                second.learn(read_documents(docs["b"]))
            outcome["ok"] = True
        except Exception as e:  # noqa: BLE001  (reported below)
            outcome["error"] = e

    with first:  # holds the lock, learns nothing, and leaves no directory on the way out
        waiter = threading.Thread(target=wait_then_learn)
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive()
    waiter.join(60)
    assert outcome == {"ok": True}, outcome
    assert learned(path) == ["b.txt"]
