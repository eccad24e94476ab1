"""The Python API as the README documents it: learn's callbacks, cancelling from one, forget."""

from __future__ import annotations

import pytest

from clslm import Document, Session

from conftest import DOCUMENT, fast_options, snapshot

OTHER = "The Velmar Bridge crosses the river Oss at Brackley. It opened in 1902 and has seven stone arches."


class Cancelled(Exception):
    pass


def test_learn_reports_each_step_and_each_document(tmp_path, llama_dir):
    steps, documents = [], []
    docs = [Document("kessenbrock.txt", DOCUMENT), Document("velmar.txt", OTHER)]
    with Session.create(tmp_path / "s", model=str(llama_dir), strategy="ttt", options=fast_options("ttt"), device="cpu") as session:
        session.learn(docs, on_step=steps.append, on_document=lambda d: documents.append(d.name))
        assert documents == ["kessenbrock.txt", "velmar.txt"]
        assert steps and all(1 <= s.i <= s.total and isinstance(s.phase, str) for s in steps)
        assert any(s.loss is not None for s in steps)  # a learn by gradient reports its loss
        assert [d["name"] for d in session.documents] == documents and all(len(d["sha256"]) == 64 for d in session.documents)
        session.forget("kessenbrock.txt")
        assert [d["name"] for d in session.documents] == ["velmar.txt"]


def test_an_exception_in_on_step_cancels_the_learn_and_keeps_the_session(tmp_path, llama_dir):
    path = tmp_path / "s"
    with Session.create(path, model=str(llama_dir), strategy="ttt", options=fast_options("ttt"), device="cpu") as session:
        session.learn([Document("kessenbrock.txt", DOCUMENT)])
    before = snapshot(path)

    def cancel(step):
        raise Cancelled

    with Session.open(path, device="cpu") as session:
        with pytest.raises(Cancelled):
            session.learn([Document("velmar.txt", OTHER)], on_step=cancel)
        assert [d["name"] for d in session.documents] == ["kessenbrock.txt"]
    assert snapshot(path) == before
