"""Sweep jitrl-mvp's retrieval options on a tuning set: one session learns the documents in sequence,
then every question is asked under each option setting (the chunks are re-made only when chunk_tokens
changes). Tune here, report on other documents with `clslm compare`.
    .venv/bin/python benchmarks/jitrl_mvp_sweep.py dev-01,dev-02,dev-03,dev-04,dev-05,dev-06 \
        --chunk-tokens 64,128,256 --k 1,2,3 --bias 0,1
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time

from clslm.bench import FACTS_INSTRUCTION
from clslm.benchdata import load_facts, load_general
from clslm.generation import generate
from clslm.documents import Document
from clslm.scoring import contains_answer
from clslm.session import Session


def numbers(text: str, kind=int) -> list:
    return [kind(x) for x in text.split(",")]


def in_context_hits(strategy, docs, max_new_tokens: int) -> int:
    """What bench's `in_context` row scores: the whole document above the question, deltas off."""
    hits = 0
    for d in docs:
        for qa in d.qa:
            context = f"{FACTS_INSTRUCTION}\n\n{d.document}"
            answer = generate(strategy.model, strategy.tokenizer, f"Question: {qa.question}", context=context, max_new_tokens=max_new_tokens, deltas=False)
            hits += contains_answer(answer.text, list(qa.answers))
    return hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ids", help="comma-separated document ids of the facts set")
    parser.add_argument("--chunk-tokens", default="128")
    parser.add_argument("--k", default="3")
    parser.add_argument("--bias", default="1")
    parser.add_argument("--route-threshold", type=float, default=0.19)
    parser.add_argument("--general-questions", type=int, default=100, help="general questions checked for routing")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--in-context", action="store_true", help="also score the whole document in the prompt (the ceiling)")
    args = parser.parse_args()
    records = {doc.id: doc for doc in load_facts()}
    docs = [records[i] for i in args.ids.split(",")]
    general = load_general()[: args.general_questions]
    for size in numbers(args.chunk_tokens):
        options = {"chunk_tokens": str(size), "overlap": str(size // 4), "route_threshold": str(args.route_threshold)}
        with tempfile.TemporaryDirectory() as tmp, Session.create(f"{tmp}/s", strategy="jitrl-mvp", options=options, device="cpu") as s:
            s.learn([Document(d.id, d.document) for d in docs])
            strategy = s.strategy()
            routed = sum(bool(strategy.retrieve(g.question)) for g in general)
            print(f"chunk_tokens {size}: {routed}/{len(general)} general questions get chunks", flush=True)
            if args.in_context:
                print(f"in context: {in_context_hits(strategy, docs, args.max_new_tokens)}/{sum(len(d.qa) for d in docs)}", flush=True)
                args.in_context = False
            for k, bias in itertools.product(numbers(args.k), numbers(args.bias, float)):
                strategy.config.k, strategy.config.bias = k, bias
                start, hits, total = time.perf_counter(), 0, 0
                for d in docs:
                    for qa in d.qa:
                        hits += contains_answer(s.ask(qa.question, max_new_tokens=args.max_new_tokens).text, list(qa.answers))
                        total += 1
                print(f"chunk_tokens {size} k {k} bias {bias:g}: {hits}/{total} = {hits / total:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
