"""The documents a session learned: finding them by name or content hash, and spotting a document learned before."""

from __future__ import annotations

import re
from typing import Any

from .documents import Document
from .errors import InputError

SHORT_HASH = 12  # characters of a sha256 that `clslm docs` shows and `clslm forget` takes


def find(documents: list[dict[str, Any]], selector: str) -> list[int]:
    """Positions of the learned documents `selector` names: its exact name, else a sha256 or its first
    characters (at least 4). Several positions only when they hold the same content (learned again)."""
    found = [i for i, d in enumerate(documents) if d["name"] == selector]
    digest = selector.strip().lower()
    if not found and re.fullmatch(r"[0-9a-f]{4,64}", digest):
        found = [i for i, d in enumerate(documents) if d.get("sha256", "").startswith(digest)]
    if not found:
        raise InputError(f"no document {selector!r} in this session (`clslm docs` lists them, with their hashes)")
    if len({documents[i].get("sha256") for i in found}) > 1:
        listed = ", ".join(documents[i].get("sha256", "")[:SHORT_HASH] for i in found)
        raise InputError(f"{selector!r} names {len(found)} documents with different content ({listed}); give one's hash")
    return found


def split_known(documents: list[dict[str, Any]], new: list[Document]) -> tuple[list[Document], list[tuple[Document, dict[str, Any]]]]:
    """(documents to learn, [(document, the learned one with its content)]): a document whose content is
    already in the session, or earlier in `new`, is not learned twice."""
    seen = {d.get("sha256"): d for d in documents}
    fresh, known = [], []
    for doc in new:
        if doc.sha256 in seen:
            known.append((doc, seen[doc.sha256]))
        else:
            fresh.append(doc)
            seen[doc.sha256] = {"name": doc.name, "sha256": doc.sha256}
    return fresh, known
