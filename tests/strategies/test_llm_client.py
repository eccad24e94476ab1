"""LLM clients against a scripted server on 127.0.0.1: streaming, errors, retries, formats, token counts."""

from __future__ import annotations

import json

import pytest

from clslm.errors import BackendUnreachable, InputError, ModelError
from clslm.strategies import llm_client
from clslm.strategies.guided import shorten
from clslm.strategies.llm_client import BackendFailed, InProcessClient, OllamaClient, OpenAIClient, estimate_tokens, ollama_url

from llm_server import Reply, ScriptedServer, free_port, ollama, ollama_error, openai

REAL_TIKTOKEN = llm_client._tiktoken  # before the autouse fixture stubs it
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello."}]
SCHEMA = {"type": "object", "properties": {"greeting": {"type": "string", "maxLength": 20}}, "required": ["greeting"], "additionalProperties": False}


@pytest.fixture(autouse=True)
def no_tiktoken_download(monkeypatch):
    """tiktoken would fetch its BPE file from the internet: tests count with the offline estimate."""
    monkeypatch.setattr(llm_client, "_tiktoken", lambda: None)


def client(server, cls=OllamaClient, **kw):
    return cls(server.url if cls is OllamaClient else server.url + "/v1", "m", **({"backoff": 0, "timeout": 5} | kw))


# ---- Ollama --------------------------------------------------------------------------------------


def test_ollama_streams_the_reply_line_by_line_with_the_schema_as_format():
    with ScriptedServer([ollama('{"greeting": "hello there"}', pieces=4)]) as server:
        reply = client(server).chat(MESSAGES, schema=SCHEMA)
    assert json.loads(reply) == {"greeting": "hello there"}
    (request,) = server.requests
    assert request.path == "/api/chat"
    assert request.body["format"] == SCHEMA and request.body["stream"] is True
    assert request.body["messages"] == MESSAGES and request.body["model"] == "m"
    assert request.body["options"]["temperature"] == 0


def test_ollama_free_text_sends_no_format():
    with ScriptedServer([ollama("Hello.")]) as server:
        assert client(server).chat(MESSAGES) == "Hello."
    assert "format" not in server.requests[0].body


def test_an_error_line_inside_a_200_stream_fails_without_retry():
    lines = [{"message": {"content": "Hel"}, "done": False}, {"error": "llama runner process has terminated"}]
    with ScriptedServer([Reply(lines=lines), ollama("never sent")], wait=0.5) as server:
        with pytest.raises(BackendFailed, match="runner process has terminated") as e:
            client(server).chat(MESSAGES)
    assert e.value.exit_code == 5 and len(server.requests) == 1


@pytest.mark.parametrize("line", ["{not json", "[1, 2]"])
def test_a_malformed_stream_line_fails(line):
    with ScriptedServer([Reply(lines=[{"message": {"content": "a"}, "done": False}, line])]) as server:
        with pytest.raises(BackendFailed, match="malformed stream line"):
            client(server).chat(MESSAGES)


def test_a_stream_that_ends_before_done_fails():
    with ScriptedServer([Reply(lines=[{"message": {"content": "a"}, "done": False}])]) as server:
        with pytest.raises(BackendFailed, match="ended before done"):
            client(server).chat(MESSAGES)


def test_a_missing_model_says_how_to_pull_it():
    with ScriptedServer([ollama_error(404, 'model "qwen9:1b" not found, try pulling it first')]) as server:
        with pytest.raises(ModelError) as e:
            OllamaClient(server.url, "qwen9:1b", backoff=0).chat(MESSAGES)
    assert str(e.value) == "model qwen9:1b not found; run ollama pull qwen9:1b"
    assert len(server.requests) == 1


def test_a_refused_connection_is_backend_unreachable():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendUnreachable) as e:
        OllamaClient(url, "m", backoff=0).chat(MESSAGES)
    assert str(e.value) == f"cannot reach Ollama at {url}" and e.value.exit_code == 5


def test_timeouts_are_retried_three_times_then_fail():
    slow = [Reply(lines=[], delay=0.3) for _ in range(5)]  # one more than the client may ask for
    with ScriptedServer(slow, wait=0.5) as server:
        with pytest.raises(BackendUnreachable, match="no answer after 4 tries") as e:
            client(server, timeout=0.1).chat(MESSAGES)
    assert len(server.requests) == 4 and e.value.exit_code == 5


@pytest.mark.parametrize("status", [429, 500, 503])
def test_busy_and_server_errors_are_retried(status):
    with ScriptedServer([ollama_error(status, "busy"), ollama_error(status, "busy"), ollama("ok")]) as server:
        assert client(server).chat(MESSAGES) == "ok"
    assert len(server.requests) == 3


def test_retries_are_bounded_for_server_errors():
    with ScriptedServer([ollama_error(500, "boom")] * 3, wait=0.5) as server:
        with pytest.raises(BackendUnreachable, match="no answer after 2 tries"):
            client(server, retries=1).chat(MESSAGES)
    assert len(server.requests) == 2


def test_other_client_errors_are_not_retried():
    with ScriptedServer([ollama_error(400, "invalid format"), ollama("never sent")], wait=0.5) as server:
        with pytest.raises(InputError, match="refused the request.*invalid format"):
            client(server).chat(MESSAGES, schema=SCHEMA)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "value, url",
    [("", "http://127.0.0.1:11434"), ("10.0.0.5", "http://10.0.0.5:11434"), ("box:1234", "http://box:1234"), ("https://ollama.example/", "https://ollama.example")],
)
def test_ollama_url_reads_ollama_host(monkeypatch, value, url):
    monkeypatch.setenv("OLLAMA_HOST", value)
    assert ollama_url() == url
    assert ollama_url("http://127.0.0.1:9") == "http://127.0.0.1:9"  # the option wins


# ---- OpenAI-compatible ---------------------------------------------------------------------------


def test_openai_sends_a_json_schema_response_format():
    with ScriptedServer([openai('{"greeting": "hi"}')]) as server:
        assert client(server, OpenAIClient).chat(MESSAGES, schema=SCHEMA) == '{"greeting": "hi"}'
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.body["response_format"] == {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True}}


# llama-cpp-python answers a response_format it does not know with a 500 naming it (seen with 0.3.36).
LLAMA_CPP_PYTHON_REFUSAL = Reply(status=500, body={"error": {"message": "('body', 'response_format', 'type'): Input should be 'text' or 'json_object'", "type": "internal_server_error"}})


@pytest.mark.parametrize("refused", [Reply(status=422, body={"detail": [{"msg": "Input should be 'text' or 'json_object'"}]}), LLAMA_CPP_PYTHON_REFUSAL])
def test_openai_falls_back_to_json_object_when_json_schema_is_refused(refused):
    with ScriptedServer([refused, openai("{}"), openai("{}")]) as server:
        c = client(server, OpenAIClient)
        assert c.chat(MESSAGES, schema=SCHEMA) == "{}"
        c.chat(MESSAGES, schema=SCHEMA)  # remembered: no second refusal
    formats = [r.body["response_format"] for r in server.requests]
    assert formats[0]["type"] == "json_schema"
    assert formats[1] == formats[2] == {"type": "json_object", "schema": SCHEMA}


def test_openai_errors():
    with ScriptedServer([Reply(status=404, body={"error": {"message": "model not found"}})]) as server:
        with pytest.raises(ModelError, match="model m .*not found"):
            client(server, OpenAIClient).chat(MESSAGES)
    with ScriptedServer([Reply(body={"choices": []})]) as server:
        with pytest.raises(BackendFailed, match="malformed reply"):
            client(server, OpenAIClient).chat(MESSAGES)
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendUnreachable, match=f"cannot reach LLM server at {url}"):
        OpenAIClient(url, "m").chat(MESSAGES)


# ---- token counts and in-process -----------------------------------------------------------------


def test_token_counts_fall_back_to_characters_over_four():
    assert estimate_tokens("") == 0 and estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2


def test_token_counts_use_tiktoken_when_it_loads(monkeypatch):
    class Encoding:
        def encode(self, text, disallowed_special=()):
            return text.split()

    monkeypatch.setattr(llm_client, "_tiktoken", lambda: Encoding())
    assert estimate_tokens("three short words") == 3


def test_tiktoken_failing_to_download_gives_none(monkeypatch):
    import tiktoken

    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    REAL_TIKTOKEN.cache_clear()
    try:
        assert REAL_TIKTOKEN() is None
    finally:
        REAL_TIKTOKEN.cache_clear()


def test_shorten_cuts_after_a_whole_sentence_or_word():
    assert shorten("The tower is tall. It was built in 1793 by Fosk", 30) == "The tower is tall."
    assert shorten("abc defgh ijklmnop", 12) == "abc defgh" and shorten("short", 10) == "short"


def test_in_process_client_fills_the_schema(llama_dir):
    from clslm.models import load_model, resolve_model

    model, tokenizer = load_model(resolve_model(str(llama_dir)), device="cpu", dtype="float32")
    c = InProcessClient(model, tokenizer, max_tokens=24)
    note = {"type": "string", "maxLength": 10}
    pick = {"anyOf": [{"type": "object", "properties": {"op": {"enum": [op]}, "note": note}} for op in ("a", "b")]}
    schema = {"type": "object", "properties": {"kind": {"type": "string", "enum": ["x", "y"]}, "notes": {"type": "array", "items": note, "minItems": 1, "maxItems": 2}, "pick": pick}}
    data = json.loads(c.chat(MESSAGES, schema=schema))
    assert set(data) == {"kind", "notes", "pick"} and data["kind"] in ("x", "y")
    assert 1 <= len(data["notes"]) <= 2 and all(isinstance(n, str) and len(n) <= 10 for n in data["notes"])
    assert set(data["pick"]) == {"op", "note"} and data["pick"]["op"] in ("a", "b")
    assert isinstance(c.chat(MESSAGES), str)
    assert c.count_tokens("hello") == len(tokenizer("hello", add_special_tokens=False)["input_ids"])
