"""End to end: `ace` learns through a real OpenAI-compatible server — llama-cpp-python's, built from its
source package by `make test-integration` — serving the embedded SmolLM2 GGUF on 127.0.0.1; the session's
own model then answers with the playbook above the question.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from importlib.util import find_spec

import pytest

from clslm.documents import Document
from clslm.models import resolve_model
from clslm.session import Session

from conftest import USER_CLSLM_HOME

pytestmark = pytest.mark.integration
if find_spec("llama_cpp") is None:
    pytest.skip("llama-cpp-python is not installed (`make test-integration` builds it)", allow_module_level=True)

DOCUMENT = (
    "The Kessenbrock Light is a stone lighthouse at the northern tip of the Tarrow Spit. "
    "It was built by the engineer Adelmar Fosk and finished in 1793. "
    "Its granite tower is 41 metres tall, and visitors climb 214 steps to reach the gallery."
)
STARTUP_SECONDS = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    """`python -m llama_cpp.server` on the embedded GGUF (the file clslm.models finds without importing
    its package), on a free port; stopped when the module's tests are done."""
    gguf, port = resolve_model("smollm2-135m").location, free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2", "--seed", "0"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        wait_until_up(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_up(url: str, process: subprocess.Popen, log) -> None:
    import httpx

    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama_cpp.server exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"llama_cpp.server did not start in {STARTUP_SECONDS} s:\n{log.read_text()[-2000:]}")


@pytest.fixture
def user_cache(monkeypatch):
    """The real model's GGUF → safetensors conversion is cached in the user's CLSLM_HOME: reuse it."""
    if USER_CLSLM_HOME is None:
        monkeypatch.delenv("CLSLM_HOME", raising=False)
    else:
        monkeypatch.setenv("CLSLM_HOME", USER_CLSLM_HOME)


def test_ace_learns_through_llama_cpp_server_then_answers(server_url, user_cache, tmp_path):
    options = {"llm_url": server_url, "llm_model": "smollm2", "questions": "2"}
    path = tmp_path / "session"
    with Session.create(path, strategy="ace", options=options, device="cpu") as s:
        (report,) = s.learn([Document(name="kessenbrock", text=DOCUMENT)])
        strategy = s.strategy()
        # llama-cpp-python takes json_object + schema, not json_schema: the client fell back and remembers.
        assert strategy.client.format == "json_object"
        answer = s.ask("Who built the Kessenbrock Light?", max_new_tokens=16)
    bullets = strategy.playbook.bullets
    print(json.dumps({"report": report.extra, "bullets": [b["text"] for b in bullets], "answer": answer.text}, indent=1))
    assert report.extra["chunks"] == 1 and bullets, f"no delta was merged: {report.extra}"
    assert all(b["doc"] == report.sha256 and b["chunk"] == 0 and 2 <= len(b["text"].split()) and len(b["text"]) <= 200 for b in bullets)
    assert len(bullets) <= 4  # one delta: at most max_ops operations
    with Session.open(path, device="cpu") as s:
        assert s.strategy().playbook.to_json() == strategy.playbook.to_json()
        again = s.ask("Who built the Kessenbrock Light?", max_new_tokens=16)
    assert (again.text, again.context_tokens) == (answer.text, answer.context_tokens)
