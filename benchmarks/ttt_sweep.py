"""Variants of a routed strategy's options (ttt unless --strategy) on a few documents, the model loaded once: hits, seconds and state per variant.

    .venv/bin/python benchmarks/ttt_sweep.py dev-01,dev-03,dev-05 'objective=next-token' 'epochs=3,lr=4e-3'
    .venv/bin/python benchmarks/ttt_sweep.py --strategy doc2lora dev-01,dev-02 '' 'objective=distill'
Each variant learns each document in a fresh copy of the model (as `bench --mode independent` does) and asks
its questions; `-v` prints every answer with the part the router chose. Learn time is wall clock and process
CPU time (CPU-s: robust to other jobs on the machine when OMP_NUM_THREADS=1).
"""

from __future__ import annotations

import argparse
import copy
import time

from clslm.benchdata import load_facts
from clslm.documents import Document
from clslm.models import load_model, resolve_model
from clslm.paths import clslm_home
from clslm.scoring import contains_answer
from clslm.registry import get
from clslm.strategies.base import StrategyContext
from clslm.strategies.config import parse_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ids", help="comma-separated document ids of the facts set (or 'long' for facts-long-dev)")
    parser.add_argument("variants", nargs="+", help="KEY=VALUE,KEY=VALUE option sets ('' for the defaults)")
    parser.add_argument("--facts", default=None, help="facts JSONL (default: the bundled dev set)")
    parser.add_argument("--strategy", default="ttt", help="a routed strategy (ttt, doc2lora, ttt-linear, ...); default ttt")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    strategy_cls = get(args.strategy)
    records = {doc.id: doc for doc in load_facts(args.facts)}
    source = resolve_model("smollm2-135m")
    base, tokenizer = load_model(source, device="cpu", dtype="float32")
    for variant in args.variants:
        options = dict(item.split("=", 1) for item in variant.split(",") if item)
        config = parse_options(strategy_cls.Config, options)
        hits = total = 0
        seconds = cpu = tokens = state = 0.0
        for doc_id in args.ids.split(","):
            record = records[doc_id]
            strategy = strategy_cls(copy.deepcopy(base), tokenizer, config, StrategyContext(source.fingerprint, cache_dir=clslm_home()))
            start, cpu_start = time.perf_counter(), time.process_time()
            report = strategy.learn(Document(doc_id, record.document))
            seconds, cpu = seconds + time.perf_counter() - start, cpu + time.process_time() - cpu_start
            tokens += report.tokens
            state += sum(t.numel() * t.element_size() for t in strategy.state_dict().values())
            doc_hits = 0
            for qa in record.qa:
                answer = strategy.answer(qa.question, max_new_tokens=40).text
                hit = contains_answer(answer, list(qa.answers))
                doc_hits += hit
                if args.verbose:
                    print(f"    {'+' if hit else '-'} {strategy.active_documents(qa.question)} {qa.question[:50]} -> {answer[:70]!r}", flush=True)
            hits, total = hits + doc_hits, total + len(record.qa)
            print(f"  {doc_id}: {doc_hits}/{len(record.qa)} {report.seconds}s {report.tokens}tok {report.extra.get('phase_seconds')} parts {report.extra.get('parts')} steps {report.extra.get('steps')} loss {report.loss_before}->{report.loss_after}", flush=True)
        print(f"[{variant}] {hits}/{total}  {seconds / tokens * 1000:.1f} s/1k tokens ({cpu / tokens * 1000:.1f} CPU-s)  {state / tokens * 1000 / 1e6:.2f} MB/1k tokens", flush=True)


if __name__ == "__main__":
    main()
