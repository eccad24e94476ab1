"""A local model's KV cache of the last token sequence it ran, reused for the next sequence that shares a prefix.

ace's roles all start with the same chunk of the document (and the same playbook bullets), and guided decoding
scores many continuations of one prompt: each call runs only the tokens after the prefix it shares with the
previous one (the cache is cut back to that prefix). Greedy decoding on top of it gives the same tokens as
running every prompt from scratch (`reuse=False` does exactly that, for the tests).
"""

from __future__ import annotations


def shared_length(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


class PrefixCache:
    """Next-token logits of token sequences, running only what the last sequence did not already run."""

    def __init__(self, model, *, reuse: bool = True):
        self.model, self.reuse = model, reuse
        self.ids: list[int] = []
        self.cache = None
        self.computed = self.skipped = 0  # tokens run / tokens taken from the cache (for tests and timing)

    def logits(self, ids: list[int], since: int):
        """Logits at positions since..len(ids)-1 (row j predicts token since+j+1); needs since < len(ids)."""
        import torch

        from .anatomy import cache_kwarg, cache_of

        keep = self._keep(ids, since)
        with torch.no_grad():
            kwargs = cache_kwarg(self.model, self.cache) if keep else {}
            output = self.model(input_ids=torch.tensor([ids[keep:]], device=self.model.device), use_cache=True, **kwargs)
        self.cache, self.ids = cache_of(output), list(ids)
        self.computed, self.skipped = self.computed + len(ids) - keep, self.skipped + keep
        return output.logits[0, since - keep :].float()

    def _keep(self, ids: list[int], since: int) -> int:
        """Cut the cache back to the tokens it shares with `ids` (at most `since` of them); how many it kept."""
        keep = min(shared_length(self.ids, ids), since) if self.reuse and self.cache is not None else 0
        if keep and keep < len(self.ids):
            if _sliding(self.cache):  # a sliding window's dropped states cannot be brought back: run it all
                keep = 0
            else:
                self.cache.crop(keep - len(self.ids))  # a negative count removes that many tokens
        if not keep:
            self.cache, self.ids = None, []
        return keep

    def greedy(self, ids: list[int], max_new_tokens: int, stop) -> list[int]:
        """Greedy continuation of `ids`: at most `max_new_tokens`, ending after a token for which
        `stop(new_tokens)` is true (an end token, a closing quote)."""
        ids, new = list(ids), []
        for _ in range(max_new_tokens):
            token = int(self.logits(ids, len(ids) - 1)[-1].argmax())
            ids.append(token)
            new.append(token)
            if stop(new):
                break
        return new


def _sliding(cache) -> bool:
    return not getattr(cache, "is_croppable", True) or any(getattr(layer, "is_sliding", False) for layer in getattr(cache, "layers", []))
