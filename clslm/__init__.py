"""clslm: let a small language model learn documents at inference time and answer from its weights."""

__version__ = "0.1.0"

__all__ = ["Document", "Session", "__version__", "get_strategy", "strategy_names"]


def __getattr__(name: str):
    # Lazy: `clslm --help` must not import torch through these.
    if name == "Session":
        from .session import Session

        return Session
    if name == "Document":
        from .documents import Document

        return Document
    if name in ("strategy_names", "get_strategy"):
        from . import registry

        return registry.names if name == "strategy_names" else registry.get
    raise AttributeError(name)
