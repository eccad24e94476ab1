"""The in-process client's KV prefix reuse (kv_prefix.PrefixCache): the same replies as running every
prompt whole, on tiny random models of each architecture, with fewer tokens run."""

from __future__ import annotations

import pytest

from clslm.strategies.ace.prompts import curator_task, delta_schema, generator_task, lessons_schema, messages, reflector_task
from clslm.strategies.kv_prefix import PrefixCache, shared_length
from clslm.strategies.llm_client import InProcessClient

from conftest import DOCUMENT
from helpers import load

BULLETS = [{"id": "b1", "text": "Adelmar Fosk built the Kessenbrock Light."}]


def roles(client: InProcessClient) -> list[str]:
    """One chunk's Generator, Reflector and Curator calls, as ace makes them (the chunk first in each)."""
    drafts = client.chat(messages(DOCUMENT, BULLETS, generator_task(2)))
    lessons = client.chat(messages(DOCUMENT, BULLETS, reflector_task(drafts, 60)), schema=lessons_schema(2, 60))
    delta = client.chat(messages(DOCUMENT, BULLETS, curator_task(["missing: It was finished in 1793."], 2, 60)), schema=delta_schema(["b1"], 2, 60))
    return [drafts, lessons, delta]


def test_reusing_the_prefix_gives_the_same_replies_as_running_each_prompt_whole(model_dir):
    model, tokenizer, _ = load(model_dir)
    whole, reused = (InProcessClient(model, tokenizer, max_tokens=24, reuse_prefix=flag) for flag in (False, True))
    assert roles(reused) == roles(whole)
    assert whole.runner.skipped == 0
    if "gemma" not in model.config.model_type:  # sliding-window layers: each prompt runs whole
        assert reused.runner.skipped > reused.runner.computed  # the chunk ran once, not once per role and choice


def test_the_cache_is_cut_back_to_the_shared_prefix(llama_dir):
    import torch

    model, _, _ = load(llama_dir)
    runner, fresh = PrefixCache(model), PrefixCache(model, reuse=False)
    first, second = [5, 6, 7, 8, 9, 10], [5, 6, 7, 11, 12]
    runner.logits(first, 0)
    got, want = runner.logits(second, 1), fresh.logits(second, 1)
    assert runner.skipped == 1 and runner.cache.get_seq_length() == len(second)  # since=1: position 1 runs again
    assert torch.allclose(got, want, atol=1e-5)
    assert shared_length(first, second) == 3 and shared_length([], second) == 0


@pytest.mark.parametrize("max_new", [1, 5])
def test_greedy_stops_at_the_cap_or_the_stop_token(llama_dir, max_new):
    model, _, _ = load(llama_dir)
    new = PrefixCache(model).greedy([5, 6, 7], max_new, lambda tokens: False)
    assert len(new) == max_new
    stop_at = new[0]
    assert PrefixCache(model).greedy([5, 6, 7], max_new, lambda tokens: tokens[-1] == stop_at) == [stop_at]
