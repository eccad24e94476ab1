"""A scripted LLM server on 127.0.0.1 for tests: Ollama's /api/chat (streamed NDJSON) and OpenAI's
/v1/chat/completions. It answers exactly the replies it was given, one request each, then stops by
itself; it also stops when no request comes for `wait` seconds. Every request body is recorded.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    lines: list[Any] | None = None  # NDJSON lines (dicts, or raw strings for malformed ones), streamed
    body: Any = None  # a JSON body, sent whole
    delay: float = 0.0  # seconds before answering


def ollama(text: str, pieces: int = 3, model: str = "m") -> Reply:
    """A 200 streaming `text` in a few message parts, then the final done line."""
    size = max(1, -(-len(text) // pieces))
    parts = [text[i : i + size] for i in range(0, len(text), size)]
    lines = [{"model": model, "message": {"role": "assistant", "content": p}, "done": False} for p in parts]
    return Reply(lines=lines + [{"model": model, "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop"}])


def ollama_error(status: int, message: str) -> Reply:
    return Reply(status=status, body={"error": message})


def openai(text: str) -> Reply:
    return Reply(body={"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})


@dataclass
class Request:
    path: str
    body: Any


class ScriptedServer:
    """`with ScriptedServer([...]) as server:` → server.url, server.requests."""

    def __init__(self, replies: list[Reply], wait: float = 10.0):
        self.replies, self.requests = list(replies), []
        self.httpd = HTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.timeout = wait
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.thread.join(timeout=self.httpd.timeout + 5)

    def _serve(self) -> None:
        try:
            for _ in self.replies:
                self.httpd.handle_request()  # returns after `wait` seconds without a request
        finally:
            self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                server.requests.append(Request(self.path, json.loads(self.rfile.read(length) or b"null")))
                reply = server.replies[len(server.requests) - 1]
                time.sleep(reply.delay)
                try:
                    self._answer(reply)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
                    pass

            def _answer(self, reply: Reply) -> None:
                self.send_response(reply.status)
                streamed = reply.lines is not None
                self.send_header("Content-Type", "application/x-ndjson" if streamed else "application/json")
                self.end_headers()  # HTTP/1.0: the body ends when the connection closes
                for line in reply.lines if streamed else [reply.body]:
                    self.wfile.write((line if isinstance(line, str) else json.dumps(line)).encode() + b"\n")
                    self.wfile.flush()

            def log_message(self, *args) -> None:
                pass

        return Handler


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
