"""ace's options (-o KEY=VALUE)."""

from __future__ import annotations

from dataclasses import dataclass

from ..base import StrategyConfig


@dataclass
class AceConfig(StrategyConfig):
    """ace options (-o KEY=VALUE)."""

    llm_model: str = ""  # model on the server; empty: the session's own model, in-process
    llm_url: str = ""  # OpenAI-compatible base URL (.../v1); else Ollama when llm_model is set
    ollama_url: str = ""  # Ollama URL (default: $OLLAMA_HOST, else http://127.0.0.1:11434)
    chunk_tokens: int = 256  # longest document chunk, in model tokens
    questions: int = 3  # questions the Generator drafts per chunk
    max_bullets: int = 64  # the playbook never grows past this
    max_bullet_chars: int = 200  # longest bullet
    max_ops: int = 4  # most operations in one delta
    k: int = 8  # bullets retrieved per question (and shown to the roles per chunk)
    budget: int = 256  # most tokens of bullets above a question
    llm_budget: int = 1024  # most tokens of bullets shown to the roles per chunk (backend's count)
    reply_tokens: int = 512  # longest reply of a role, in tokens
    timeout: float = 120.0  # seconds to wait for a server's reply (connect: 5 s)

    def __post_init__(self):
        for name in ("chunk_tokens", "questions", "max_bullets", "max_ops", "k", "budget", "llm_budget", "reply_tokens"):
            self.check(getattr(self, name) >= 1, f"{name} must be >= 1")
        self.check(self.chunk_tokens >= 16, "chunk_tokens must be >= 16")
        self.check(self.max_bullet_chars >= 16, "max_bullet_chars must be >= 16")
        self.check(self.timeout > 0, "timeout must be > 0")
        self.check(not self.ollama_url or self.llm_model, "ollama_url needs -o llm_model=NAME (the model to use on Ollama)")
