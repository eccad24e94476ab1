"""ace's playbook: short bullets, bounded and deduplicated, changed only by validated delta operations."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ...state_files import is_int, need


def clean(text: str) -> str:
    return " ".join(text.split())


def dedupe_key(text: str) -> str:
    """Bullets that differ only in case, punctuation or spacing are one bullet."""
    return " ".join(re.findall(r"\w+", text.lower()))


@dataclass
class Playbook:
    """Bullets {id, text, doc (sha256), chunk}, bounded and deduplicated; changed only by apply()."""

    max_bullets: int
    max_chars: int
    bullets: list[dict[str, Any]] = field(default_factory=list)
    next_id: int = 1  # ids are never reused

    def to_dict(self) -> dict[str, Any]:
        return {"bullets": self.bullets, "next_id": self.next_id}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @staticmethod
    def check(data: Any) -> None:
        """A saved playbook's layout (ValueError: the session names the file): bullets {id, text, doc, chunk}, next_id."""
        need(isinstance(data, dict) and isinstance(data.get("bullets"), list) and is_int(data.get("next_id")), "the playbook needs bullets and a whole next_id")
        for b in data["bullets"]:
            ok = isinstance(b, dict) and set(b) == {"id", "text", "doc", "chunk"} and all(isinstance(b[k], str) for k in ("id", "text", "doc")) and is_int(b["chunk"])
            need(ok, "a playbook bullet needs string id, text and doc and a whole chunk")

    @classmethod
    def from_dict(cls, data: Any, max_bullets: int, max_chars: int) -> "Playbook":
        cls.check(data)
        return cls(max_bullets, max_chars, [dict(b) for b in data["bullets"]], data["next_id"])

    def get(self, bullet_id: str) -> dict[str, Any] | None:
        return next((b for b in self.bullets if b["id"] == bullet_id), None)

    def apply(self, ops: list[dict[str, str]], doc: str, chunk: int) -> Counter:
        """Merge validated operations one by one; returns what each did (added, updated, removed,
        duplicate, full, gone)."""
        return Counter(self._apply(op, {"doc": doc, "chunk": chunk}) for op in ops)

    def _apply(self, op: dict[str, str], source: dict[str, Any]) -> str:
        target, text = self.get(op["id"]), clean(op["text"])[: self.max_chars]
        if op["op"] != "add" and target is None:
            return "gone"  # removed earlier in the same delta
        if op["op"] == "remove":
            self.bullets.remove(target)
            return "removed"
        if any(dedupe_key(b["text"]) == dedupe_key(text) for b in self.bullets if b is not target):
            return "duplicate"
        if op["op"] == "update":
            target.update(text=text, **source)
            return "updated"
        if len(self.bullets) >= self.max_bullets:
            return "full"
        self.bullets.append({"id": f"b{self.next_id}", "text": text, **source})
        self.next_id += 1
        return "added"
