"""One small chat interface over the LLMs `ace` can learn with: Ollama, OpenAI-compatible servers, in-process.

`LLMClient.chat(messages, *, schema=None) -> str` returns the reply text; with a JSON schema the reply
is JSON meant to match it (servers enforce it with structured outputs; callers still validate).
`count_tokens` measures prompts against the backend's budget.
"""

from __future__ import annotations

import json
import os
import threading
import time
from abc import ABC, abstractmethod
from functools import lru_cache
from typing import Any

from ..errors import BackendUnreachable, InputError, ModelError

Messages = list[dict[str, str]]
DEFAULT_OLLAMA = "http://127.0.0.1:11434"
CONNECT_TIMEOUT = 5.0
RETRIES = 3  # extra tries, only after a timeout, a 5xx or a 429
TIKTOKEN_ENCODING = "o200k_base"


class BackendFailed(BackendUnreachable):
    """The server answered, but with an error or a malformed reply (exit 5, like an unreachable one)."""


class LLMClient(ABC):
    label = "LLM"

    @abstractmethod
    def chat(self, messages: Messages, *, schema: dict[str, Any] | None = None) -> str:
        """The assistant's reply to `messages` (JSON text when `schema` is given)."""

    def count_tokens(self, text: str) -> int:
        return estimate_tokens(text)


# ---- token counting for remote models ------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """Tokens by tiktoken when its BPE file is available, else about four characters a token."""
    encoding = _tiktoken()
    return len(encoding.encode(text, disallowed_special=())) if encoding else (len(text) + 3) // 4


@lru_cache(maxsize=1)
def _tiktoken():
    """tiktoken's encoding, or None: the wheel ships no BPE files and fetches them at first use, which
    fails offline (or hangs on a black-holed network: hence the thread with a time limit)."""
    found: list = []

    def load() -> None:
        try:
            import tiktoken

            found.append(tiktoken.get_encoding(TIKTOKEN_ENCODING))
        except Exception:  # offline, no cache: fall back to the estimate
            pass

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout=10)
    return found[0] if found else None


# ---- HTTP servers --------------------------------------------------------------------------------


class _Retry(Exception):
    """A reply worth trying again (5xx, 429)."""


class Refused(InputError):
    """The server refused the request itself (a 4xx other than 404 and 429)."""


class HTTPClient(LLMClient):
    """What Ollama and OpenAI-compatible clients share: timeouts, bounded retries with backoff, errors."""

    def __init__(self, url: str, model: str, *, timeout: float = 120.0, retries: int = RETRIES, backoff: float = 0.5, seed: int = 0, max_tokens: int = 512):
        import httpx

        self.url, self.model, self.retries, self.backoff = url.rstrip("/"), model, retries, backoff
        self.seed, self.max_tokens = seed, max_tokens
        self.http = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)))

    def chat(self, messages: Messages, *, schema: dict[str, Any] | None = None) -> str:
        return self._with_retries(lambda: self._send(messages, schema))

    @abstractmethod
    def _send(self, messages: Messages, schema: dict[str, Any] | None) -> str: ...

    def _with_retries(self, send):
        import httpx

        for attempt in range(self.retries + 1):
            try:
                return send()
            except httpx.ConnectError:
                raise BackendUnreachable(f"cannot reach {self.label} at {self.url}") from None
            except (httpx.TimeoutException, _Retry) as e:
                last = str(e) or type(e).__name__
            except httpx.TransportError as e:  # connection dropped mid-reply
                raise BackendFailed(f"{self.label} at {self.url}: connection failed ({type(e).__name__})") from None
            if attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
        raise BackendUnreachable(f"{self.label} at {self.url}: no answer after {self.retries + 1} tries ({last})")

    def _check_status(self, response) -> None:
        if response.status_code < 400:
            return
        response.read()
        detail, status = _error_text(response), response.status_code
        if status == 404:
            raise self._not_found(detail)
        if status == 429 or (status >= 500 and not self._format_refused(detail)):
            raise _Retry(f"HTTP {status}: {detail}")
        raise Refused(f"{self.label} at {self.url} refused the request (HTTP {status}: {detail})")

    def _format_refused(self, detail: str) -> bool:
        """A server error that is about the request's output format: asking again cannot help."""
        return False

    def _not_found(self, detail: str) -> Exception:
        return ModelError(f"{self.label} at {self.url}: {detail or 'not found'} (HTTP 404)")

    def _failed(self, what: str) -> BackendFailed:
        return BackendFailed(f"{self.label} at {self.url}: {what}")


def _error_text(response) -> str:
    """The error message of an error reply: Ollama's {"error": "..."}, OpenAI's {"error": {"message": ...}}."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200]
    error = body.get("error", body.get("detail", body)) if isinstance(body, dict) else body
    if isinstance(error, dict):
        error = error.get("message", error)
    return str(error)[:300]


def ollama_url(value: str = "") -> str:
    """The Ollama base URL: the option, else $OLLAMA_HOST, else localhost; 'host:port' gets http://."""
    value = (value or os.environ.get("OLLAMA_HOST", "")).strip() or DEFAULT_OLLAMA
    if "://" not in value:
        value = "http://" + value
        if value.count(":") == 1:  # no port given
            value += ":11434"
    return value.rstrip("/")


class OllamaClient(HTTPClient):
    """Ollama's /api/chat: streamed NDJSON, `format` = the JSON schema, errors checked on every line."""

    label = "Ollama"

    def __init__(self, url: str, model: str, **kw):
        super().__init__(ollama_url(url), model, **kw)

    def _send(self, messages: Messages, schema: dict[str, Any] | None) -> str:
        body = {"model": self.model, "messages": messages, "stream": True, "options": {"temperature": 0, "seed": self.seed, "num_predict": self.max_tokens}}
        if schema is not None:
            body["format"] = schema
        with self.http.stream("POST", self.url + "/api/chat", json=body) as response:
            self._check_status(response)
            return "".join(self._contents(response.iter_lines()))

    def _contents(self, lines):
        """Message contents of an NDJSON stream; an `error` on any line (even in a 200) is a failure."""
        for line in lines:
            if not line.strip():
                continue
            try:
                part = json.loads(line)
            except ValueError:
                raise self._failed(f"malformed stream line {line[:80]!r}") from None
            if not isinstance(part, dict):
                raise self._failed(f"malformed stream line {line[:80]!r}")
            if part.get("error"):
                raise self._failed(f"error while generating: {part['error']}")
            yield (part.get("message") or {}).get("content") or ""
            if part.get("done"):
                return
        raise self._failed("the stream ended before done")

    def _not_found(self, detail: str) -> Exception:
        if "not found" in detail:
            return ModelError(f"model {self.model} not found; run ollama pull {self.model}")
        return super()._not_found(detail)


class OpenAIClient(HTTPClient):
    """OpenAI-compatible /v1/chat/completions (llama.cpp, llama-cpp-python, vLLM, LM Studio, Ollama's /v1).

    Structured outputs: `response_format` json_schema where the server takes it; a server that refuses it
    (a 4xx, or llama-cpp-python's 500 naming response_format) is asked with json_object + schema (llama-cpp-python's form), then with no format at all.
    """

    label = "LLM server"
    FORMATS = ("json_schema", "json_object", "none")

    def __init__(self, url: str, model: str, **kw):
        super().__init__(url, model or "default", **kw)
        self.format = self.FORMATS[0]

    def chat(self, messages: Messages, *, schema: dict[str, Any] | None = None) -> str:
        while True:
            try:
                return super().chat(messages, schema=schema)
            except Refused:
                if schema is None or self.format == self.FORMATS[-1]:
                    raise
                self.format = self.FORMATS[self.FORMATS.index(self.format) + 1]

    def _send(self, messages: Messages, schema: dict[str, Any] | None) -> str:
        body = {"model": self.model, "messages": messages, "temperature": 0, "seed": self.seed, "max_tokens": self.max_tokens}
        if schema is not None and self.format != "none":
            body["response_format"] = response_format(self.format, schema)
        response = self.http.post(self.url + "/chat/completions", json=body)
        self._check_status(response)
        try:
            return response.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise self._failed(f"malformed reply {response.text[:80]!r}") from None

    def _format_refused(self, detail: str) -> bool:
        return "response_format" in detail

    def _not_found(self, detail: str) -> Exception:
        return ModelError(f"{self.label} at {self.url}: model {self.model} or /chat/completions not found ({detail}); is the URL the .../v1 base?")


def response_format(kind: str, schema: dict[str, Any]) -> dict[str, Any]:
    if kind == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}
    return {"type": "json_object", "schema": schema}


# ---- in-process ----------------------------------------------------------------------------------


class InProcessClient(LLMClient):
    """The session's own model: greedy chat; schemas by guided decoding. One KV cache is kept across
    calls (kv_prefix.PrefixCache): a prompt that starts as the previous one did (ace's roles all start
    with the same chunk) runs only its own tokens; `reuse_prefix=False` runs every prompt whole."""

    label = "in-process model"

    def __init__(self, model, tokenizer, *, max_tokens: int = 256, reuse_prefix: bool = True):
        from .kv_prefix import PrefixCache

        self.model, self.tokenizer, self.max_tokens = model, tokenizer, max_tokens
        self.runner = PrefixCache(model, reuse=reuse_prefix)

    def chat(self, messages: Messages, *, schema: dict[str, Any] | None = None) -> str:
        from ..generation import chat_prompt
        from .guided import fill

        prompt = chat_prompt(self.tokenizer, flatten(messages))
        if schema is not None:
            return fill(self.model, self.tokenizer, prompt, schema, max_tokens=self.max_tokens, runner=self.runner)
        ids, ends = self.tokenizer(prompt, add_special_tokens=False)["input_ids"], end_ids(self.model, self.tokenizer)
        new = self.runner.greedy(ids, self.max_tokens, lambda new: new[-1] in ends)
        return self.tokenizer.decode(new, skip_special_tokens=True).strip()

    def count_tokens(self, text: str) -> int:
        from ..generation import count_tokens

        return count_tokens(self.tokenizer, text)


def end_ids(model, tokenizer) -> set[int]:
    """The tokens that end a reply: the model's generation config's and the tokenizer's end tokens."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = set() if ids is None else {ids} if isinstance(ids, int) else set(ids)
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def flatten(messages: Messages) -> str:
    """System and user turns as one user message (small local chat templates know no system role)."""
    return "\n\n".join(m["content"].strip() for m in messages if m["content"].strip())
