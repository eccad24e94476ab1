"""Time per generated token: plain greedy decoding vs jitrl-full's store modulation.

The store is ROWS rows of random unit keys (the search costs the same whatever the rows hold), and the
threshold is -1 so every step does the full work: one matrix product, top-k and a scatter. Both runs
generate exactly TOKENS tokens. Usage:

    .venv/bin/python benchmarks/jitrl_latency.py [--model smollm2-135m] [--rows 10000] [--tokens 48] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from clslm.generation import chat_prompt
from clslm.models import load_model, resolve_model
from clslm.strategies.jitrl_full import JitrlFull, JitrlFullConfig


def seconds_per_token(model, inputs, tokens: int, processors: list, repeats: int) -> float:
    from transformers import LogitsProcessorList

    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            model.generate(
                **inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                logits_processor=LogitsProcessorList(processors),
            )
        runs.append((time.perf_counter() - start) / tokens)
    return statistics.median(runs)


def fill_store(strategy: JitrlFull, rows: int) -> None:
    generator = torch.Generator().manual_seed(0)
    width = strategy.keys.shape[1]
    keys = torch.nn.functional.normalize(torch.randn(rows, width, generator=generator), dim=-1)
    vocab = strategy.model.get_output_embeddings().weight.shape[0]
    center = torch.zeros(strategy.model.get_input_embeddings().embedding_dim)
    strategy.load_state_dict(
        {"jitrl_keys": keys.half(), "jitrl_next": torch.randint(vocab, (rows,), generator=generator),
         "jitrl_center": center, "jitrl_meta": strategy._meta()}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = load_model(resolve_model(args.model), device=args.device, dtype="auto")
    strategy = JitrlFull(model, tokenizer, JitrlFullConfig(threshold=-1.0))
    fill_store(strategy, args.rows)
    prompt = chat_prompt(tokenizer, "Which engineer oversaw the building of the Kessenbrock Light?")
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)

    seconds_per_token(model, inputs, 4, [], 1)  # warm-up
    plain = seconds_per_token(model, inputs, args.tokens, [], args.repeats)
    modulated = seconds_per_token(model, inputs, args.tokens, strategy.logits_processors(""), args.repeats)
    print(f"model {args.model} on {model.device} ({model.dtype}), {args.threads} threads, store {args.rows} rows × {strategy.keys.shape[1]}")
    print(f"plain     {plain * 1e3:7.1f} ms/token")
    print(f"jitrl-full {modulated * 1e3:6.1f} ms/token  ({modulated / plain:.2f}x)")


if __name__ == "__main__":
    main()
