"""JSON-schema-guided greedy decoding with a local causal LM, for the small subset of JSON Schema `ace` uses.

The schema writes the structure (braces, keys, commas); the model picks enum values and whether an
array goes on by likelihood, and writes each string greedily until its closing quote. The result
parses and has the schema's shape whatever the model, as a server's structured output would.
Supported: object (properties in order, all written), array (items, minItems, maxItems), string
(maxLength), enum, anyOf (the variant whose fixed start is likeliest).
"""

from __future__ import annotations

import json
from typing import Any

from .kv_prefix import PrefixCache

OPENERS = {"object": "{", "array": "[", "string": '"'}


def fill(model, tokenizer, prompt: str, schema: dict[str, Any], *, max_tokens: int = 256, runner: PrefixCache | None = None) -> str:
    """JSON text for `schema`, continuing `prompt`; at most `max_tokens` generated for all strings.
    `runner` (a PrefixCache of `model`) is the KV cache to continue from: pass the same one to calls
    whose prompts share a prefix."""
    return _Guide(runner or PrefixCache(model), tokenizer, max_tokens).value(prompt, schema)


class _Guide:
    def __init__(self, runner: PrefixCache, tokenizer, max_tokens: int):
        self.runner, self.tokenizer, self.left = runner, tokenizer, max_tokens

    def value(self, prefix: str, schema: dict[str, Any]) -> str:
        if "anyOf" in schema:
            heads = [head(v) for v in schema["anyOf"]]
            return self.value(prefix, schema["anyOf"][heads.index(self.choose(prefix, heads))])
        if "enum" in schema:
            return self.choose(prefix, [json.dumps(v) for v in schema["enum"]])
        kind = schema.get("type")
        if kind == "object":
            return self.object(prefix, schema)
        if kind == "array":
            return self.array(prefix, schema)
        if kind == "string":
            return self.string(prefix, schema.get("maxLength", 200))
        raise ValueError(f"guided decoding does not support {schema!r}")

    def object(self, prefix: str, schema: dict[str, Any]) -> str:
        out = "{"
        for i, (key, sub) in enumerate(schema.get("properties", {}).items()):
            out += (", " if i else "") + json.dumps(key) + ": "
            out += self.value(prefix + out, sub)
        return out + "}"

    def array(self, prefix: str, schema: dict[str, Any]) -> str:
        out, item = "[", schema.get("items", {})
        opener = '"' if "enum" in item else OPENERS.get(item.get("type"), "")
        for n in range(schema.get("maxItems", 8)):
            if n >= schema.get("minItems", 0):
                more = (", " if n else "") + opener
                if self.left <= 0 or self.choose(prefix + out, ["]", more]) == "]":
                    break
            out += ", " if n else ""
            out += self.value(prefix + out, item)
        return out + "]"

    def string(self, prefix: str, max_chars: int) -> str:
        """A string the model writes after an opening quote, cut at its closing quote or a newline."""
        budget = min(self.left, max(4, max_chars // 2))
        if budget <= 0:
            return '""'
        decode = lambda new: self.tokenizer.decode(new, skip_special_tokens=True)  # noqa: E731
        ends = _end_ids(self.tokenizer)
        new = self.runner.greedy(self._ids(prefix + '"'), budget, lambda new: new[-1] in ends or '"' in decode(new[-1:]) or "\n" in decode(new[-1:]))
        self.left -= len(new)
        return json.dumps(shorten(decode(new).split('"')[0].split("\n")[0].strip(), max_chars))

    def choose(self, prefix: str, options: list[str]) -> str:
        """The option the model finds likeliest after `prefix` (sum of token log-probabilities)."""
        return options[0] if len(options) == 1 else max(options, key=lambda option: self._logprob(prefix, option))

    def _logprob(self, prefix: str, continuation: str) -> float:
        start, ids = max(len(self._ids(prefix)), 1), self._ids(prefix + continuation)
        if start >= len(ids):
            return 0.0
        logits = self.runner.logits(ids, start - 1).log_softmax(-1)  # row j predicts token start + j
        return sum(logits[i - start, ids[i]].item() for i in range(start, len(ids)))

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def _end_ids(tokenizer) -> set[int]:
    return {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()


def head(schema: dict[str, Any]) -> str:
    """The text a value of `schema` must start with, up to its first free choice (to pick an anyOf variant)."""
    if "enum" in schema and len(schema["enum"]) == 1:
        return json.dumps(schema["enum"][0])
    if schema.get("type") == "object" and schema.get("properties"):
        key, sub = next(iter(schema["properties"].items()))
        return "{" + json.dumps(key) + ": " + head(sub)
    return OPENERS.get(schema.get("type"), "")


def shorten(text: str, max_chars: int) -> str:
    """`text` within max_chars, cut after its last whole sentence (else word) that fits."""
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars + 1]
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
    return cut[: end + 1] if end >= max_chars // 3 else cut[:max_chars].rsplit(" ", 1)[0]
